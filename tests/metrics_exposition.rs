//! `GET /metrics` read as Prometheus reads it: the whole exposition parsed and held to what
//! `promtool check metrics` checks (HELP and TYPE for every sample, counters ending in `_total`,
//! cumulative histogram buckets ending at `+Inf` equal to `_count`, no summaries, finite values,
//! valid names, escaped label values), counters that only go up across calls, and the Grafana
//! dashboard and alert rules in `ops/` naming only metrics the server exports.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::call::Rig;
use crate::support::TestServer;

const READ_KEY: &str = "metrics-read-key-0123456789";
const WAIT: Duration = Duration::from_secs(10);

/// One sample line: the name as written, its labels in order, its value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

impl Sample {
    /// The series' identity: name and labels, as one key.
    fn series(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

#[derive(Debug, Default)]
struct Exposition {
    /// Family name to its TYPE.
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn value(&self, series: &str) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.series() == series)
            .map(|s| s.value)
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    is_metric_name(name) && !name.contains(':')
}

/// A sample's labels, in order: (name, unescaped value).
type Labels = Vec<(String, String)>;

/// Parses `{name="value",...}` at the start of `text`; returns the labels and the rest.
fn parse_labels(text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = text.strip_prefix('{').ok_or("labels must open with {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest.split_once("=\"").ok_or("a label without =\"")?;
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("an unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("a bad escape in a label value: {other:?}")),
                },
                Some((_, '\n')) => return Err("a raw newline in a label value".into()),
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// The family a sample belongs to, given the declared types: a histogram's `_bucket`, `_sum`
/// and `_count` belong to it; anything else to the family of its own name.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.get(base).is_some_and(|t| t == "histogram") {
                return base;
            }
        }
    }
    name
}

/// Parses a whole exposition and checks it as `promtool check metrics` would, plus our own
/// rules (no summaries, no untyped samples). `Err` says what is wrong and where.
fn check_exposition(text: &str) -> Result<Exposition, String> {
    let mut out = Exposition::default();
    let mut helps = BTreeSet::new();
    let mut finished_families = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut seen_series = BTreeSet::new();
    for (idx, line) in text.lines().enumerate() {
        let at = |what: String| format!("line {}: {what}: {line:?}", idx + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (keyword, name, rest) = (parts.next(), parts.next(), parts.next());
            let Some(name) = name else { continue };
            match keyword {
                Some("HELP") => {
                    if !helps.insert(name.to_string()) {
                        return Err(at(format!("a second HELP for {name}")));
                    }
                    if rest.is_none_or(|h| h.trim().is_empty()) {
                        return Err(at(format!("an empty HELP for {name}")));
                    }
                }
                Some("TYPE") => {
                    let kind = rest.unwrap_or_default();
                    if !["counter", "gauge", "histogram"].contains(&kind) {
                        return Err(at(format!("type {kind:?} (no summaries, no untyped)")));
                    }
                    if kind == "counter" && !name.ends_with("_total") {
                        return Err(at(format!("counter {name} does not end in _total")));
                    }
                    if out
                        .types
                        .insert(name.to_string(), kind.to_string())
                        .is_some()
                    {
                        return Err(at(format!("a second TYPE for {name}")));
                    }
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let value_text = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?;
        let value: f64 = value_text
            .parse()
            .map_err(|_| at(format!("value {value_text:?} is not one number")))?;
        if !value.is_finite() {
            return Err(at("a value that is not finite".into()));
        }
        let family = family_of(name, &out.types).to_string();
        let Some(kind) = out.types.get(&family) else {
            return Err(at(format!("no TYPE for {family} before its samples")));
        };
        if !helps.contains(&family) {
            return Err(at(format!("no HELP for {family}")));
        }
        if kind == "counter" && value < 0.0 {
            return Err(at("a negative counter".into()));
        }
        if current.as_deref() != Some(family.as_str()) {
            if finished_families.contains(&family) {
                return Err(at(format!("the samples of {family} are not together")));
            }
            if let Some(previous) = current.replace(family.clone()) {
                finished_families.insert(previous);
            }
        }
        let sample = Sample {
            name: name.to_string(),
            labels,
            value,
        };
        if !seen_series.insert(sample.series()) {
            return Err(at("a series given twice".into()));
        }
        out.samples.push(sample);
    }
    check_histograms(&out)?;
    Ok(out)
}

/// Every histogram series: `le` buckets in increasing order, cumulative, ending at `+Inf`, which
/// equals `_count`; and a `_sum`.
fn check_histograms(exposition: &Exposition) -> Result<(), String> {
    // (family, labels without le) -> [(le, count)]
    let mut buckets: BTreeMap<(String, String), Vec<(f64, f64)>> = BTreeMap::new();
    let mut counts: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut sums = BTreeSet::new();
    for sample in &exposition.samples {
        let family = family_of(&sample.name, &exposition.types);
        if exposition.types.get(family).map(String::as_str) != Some("histogram") {
            continue;
        }
        let others: Vec<String> = sample
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        let key = (family.to_string(), others.join(","));
        match &sample.name[family.len()..] {
            "_bucket" => {
                let le = sample
                    .labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .ok_or_else(|| format!("{} without le", sample.series()))?;
                let le: f64 = match le.1.as_str() {
                    "+Inf" => f64::INFINITY,
                    other => other
                        .parse()
                        .map_err(|_| format!("{}: le {other:?}", sample.series()))?,
                };
                buckets.entry(key).or_default().push((le, sample.value));
            }
            "_count" => {
                counts.insert(key, sample.value);
            }
            "_sum" => {
                sums.insert(key);
            }
            other => return Err(format!("{family}{other} in a histogram")),
        }
    }
    if buckets.is_empty() && exposition.types.values().any(|t| t == "histogram") {
        return Err("a histogram family without buckets".into());
    }
    for (key, series) in &buckets {
        if !series.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(format!("{key:?}: le not in increasing order"));
        }
        if !series.windows(2).all(|w| w[0].1 <= w[1].1) {
            return Err(format!("{key:?}: buckets not cumulative"));
        }
        let Some(&(last_le, last_count)) = series.last() else {
            continue;
        };
        if last_le != f64::INFINITY {
            return Err(format!("{key:?}: no +Inf bucket"));
        }
        if counts.get(key) != Some(&last_count) {
            return Err(format!(
                "{key:?}: +Inf is {last_count}, _count {:?}",
                counts.get(key)
            ));
        }
        if !sums.contains(key) {
            return Err(format!("{key:?}: no _sum"));
        }
    }
    Ok(())
}

#[test]
fn the_checker_refuses_what_promtool_would() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"x\\\"y\\\\z\\n\"} 1\n\
                # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\n\
                h_sum 0.3\nh_count 2\n";
    let parsed = check_exposition(good).expect("a valid exposition");
    assert_eq!(parsed.samples[0].labels[0].1, "x\"y\\z\n");
    for (broken, why) in [
        ("a_total 1\n", "no TYPE"),
        ("# TYPE a_total counter\na_total 1\n", "no HELP"),
        ("# HELP a A.\n# TYPE a counter\na 1\n", "_total"),
        ("# HELP s S.\n# TYPE s summary\ns{quantile=\"0.5\"} 1\n", "summar"),
        ("# HELP g G.\n# TYPE g gauge\ng NaN\n", "finite"),
        ("# HELP g G.\n# TYPE g gauge\ng +Inf\n", "finite"),
        ("# HELP 1g G.\n# TYPE 1g gauge\n1g 1\n", "name"),
        ("# HELP g G.\n# TYPE g gauge\ng{k=\"a\\q\"} 1\n", "escape"),
        ("# HELP g G.\n# TYPE g gauge\ng{k=\"a} 1\n", "unterminated"),
        ("# HELP g G.\n# TYPE g gauge\ng 1\ng 2\n", "twice"),
        (
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"0.1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "cumulative",
        ),
        (
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_sum 1\nh_count 1\n",
            "+Inf",
        ),
        (
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
            "_count",
        ),
        (
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 2\n",
            "_sum",
        ),
    ] {
        let err = check_exposition(broken).expect_err(why);
        assert!(err.contains(why), "{why}: {err}");
    }
}

/// The exposition, scraped with the read key, checked.
fn scrape(server: &TestServer) -> Exposition {
    let res = server
        .request("GET", "/metrics")
        .header("Authorization", &format!("Bearer {READ_KEY}"))
        .send();
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(
        res.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    check_exposition(&res.body).unwrap_or_else(|err| panic!("{err}\n{}", res.body))
}

/// A call with one turn, to its end.
fn one_call(rig: &Rig) {
    rig.script(&["I need help with a custody schedule."]);
    let caller = rig.greeted();
    caller.say("I need help with a custody schedule.");
    assert!(caller.wait_for_echoes(2, WAIT), "the answer was heard");
    let sid = caller.call_sid().to_string();
    caller.hang_up();
    rig.record_after_end(&sid);
}

#[test]
fn the_exposition_is_valid_and_its_counters_only_go_up_across_calls() {
    let rig = Rig::start(&[("READ_API_KEY", READ_KEY)]);
    one_call(&rig);
    let first = scrape(&rig.server);
    one_call(&rig);
    let second = scrape(&rig.server);

    let first_frame = "cotrackpro_turn_stage_seconds_count{stage=\"first_frame\"}";
    let turns = "cotrackpro_turns_total{}";
    for series in [first_frame, turns, "cotrackpro_calls_started_total{}"] {
        let (a, b) = (first.value(series), second.value(series));
        assert!(a.is_some_and(|a| a >= 1.0), "{series}: {a:?}");
        assert!(b > a, "{series} grew with the second call: {a:?} -> {b:?}");
    }
    let llm_hop = "cotrackpro_turn_hop_seconds_count{hop=\"llm_first_token\"}";
    assert!(second.value(llm_hop).is_some_and(|v| v >= 2.0));
    let answered = "cotrackpro_http_responses_total{route=\"call_incoming\",code=\"2xx\"}";
    assert!(second.value(answered) > first.value(answered));
    let timed = "cotrackpro_http_request_duration_seconds_count{route=\"call_incoming\"}";
    assert!(second.value(timed) > first.value(timed));
    let spent = "cotrackpro_spend_usd_total{component=\"claude_output\"}";
    assert!(second.value(spent) > first.value(spent), "{spent}");
    assert_eq!(
        second.value(&format!(
            "cotrackpro_build_info{{version={:?}}}",
            env!("CARGO_PKG_VERSION")
        )),
        Some(1.0)
    );
    for process in ["process_resident_memory_bytes{}", "process_threads{}"] {
        assert!(second.value(process).is_some_and(|v| v > 0.0), "{process}");
    }

    // Monotonic: every counter and histogram series of the first scrape is in the second, no
    // lower (a histogram's buckets, _sum and _count included).
    let later: BTreeMap<String, f64> = second
        .samples
        .iter()
        .map(|s| (s.series(), s.value))
        .collect();
    let mut compared = 0;
    for sample in &first.samples {
        let family = family_of(&sample.name, &first.types);
        if first.types.get(family).is_some_and(|t| t == "gauge") {
            continue;
        }
        let series = sample.series();
        let after = later.get(&series).copied();
        assert!(
            after.is_some_and(|after| after >= sample.value),
            "{series} went from {} to {after:?}",
            sample.value
        );
        compared += 1;
    }
    assert!(compared > 100, "only {compared} series compared");
}

/// The metric names an expression refers to: its words that start as ours do.
fn referenced_metrics(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("cotrackpro_") || word.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

fn ops_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("ops")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The PromQL expressions of the Grafana dashboard: every panel target and template query.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels {
        let targets = panel["targets"].as_array().expect("each panel has targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            exprs.push(target["expr"].as_str().expect("a PromQL expr").to_string());
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if variable["type"] == "query" {
            exprs.push(variable["query"].as_str().expect("a query").to_string());
        }
    }
    exprs
}

/// The alert rules' expressions, each rule checked for the fields Prometheus and a receiver
/// need (the file is YAML; its rules are one `- alert:` block each, as written).
fn alert_exprs(yaml: &str) -> Vec<String> {
    assert!(yaml.lines().any(|l| l == "groups:"), "a rules file");
    let rules: Vec<&str> = yaml.split("      - alert: ").skip(1).collect();
    assert!(rules.len() >= 8, "{} rules", rules.len());
    rules
        .iter()
        .map(|rule| {
            let field = |key: &str| {
                rule.lines()
                    .find_map(|l| l.trim_start().strip_prefix(key))
                    .unwrap_or_else(|| panic!("{key} in {rule}"))
                    .trim()
                    .to_string()
            };
            assert!(["critical", "warning"].contains(&field("severity: ").as_str()));
            assert!(!field("summary: ").is_empty());
            field("expr: ")
        })
        .collect()
}

#[test]
fn the_dashboard_and_alert_rules_load_and_name_only_exported_metrics() {
    let server = TestServer::start(&[("READ_API_KEY", READ_KEY)]);
    let exported = scrape(&server).types;
    let dashboard: serde_json::Value =
        serde_json::from_str(&ops_file("grafana-dashboard.json")).expect("the dashboard parses");
    assert_eq!(dashboard["uid"], "cotrackpro-voice");
    let mut named = BTreeSet::new();
    for expr in dashboard_exprs(&dashboard)
        .into_iter()
        .chain(alert_exprs(&ops_file("alerts.yml")))
    {
        let referenced = referenced_metrics(&expr);
        assert!(!referenced.is_empty(), "no metric in {expr}");
        for name in referenced {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    (exported.get(base).map(String::as_str) == Some("histogram")).then_some(base)
                })
                .unwrap_or(&name);
            assert!(
                exported.contains_key(family),
                "{name} (in {expr}) is not exported"
            );
            named.insert(family.to_string());
        }
    }
    // The dashboard and rules between them cover the families that matter to an operator.
    for family in [
        "cotrackpro_turn_stage_seconds",
        "cotrackpro_turn_hop_seconds",
        "cotrackpro_provider_errors_total",
        "cotrackpro_http_responses_total",
        "cotrackpro_spend_usd_total",
        "process_open_fds",
    ] {
        assert!(
            named.contains(family),
            "{family} is on no panel and in no rule"
        );
    }
}

/// Scrapes until `done` holds of the exposition (or 10 s pass); the last scrape.
fn wait_for(server: &TestServer, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = scrape(server);
        if done(&now) || std::time::Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The sum of a counter family's samples whose labels include `provider="..."` when given.
fn total(exposition: &Exposition, family: &str, provider: Option<&str>) -> f64 {
    exposition
        .samples
        .iter()
        .filter(|s| s.name == family)
        .filter(|s| {
            provider.is_none_or(|p| s.labels.iter().any(|(k, v)| k == "provider" && v == p))
        })
        .map(|s| s.value)
        .sum()
}

#[test]
fn provider_retries_and_failures_are_counted_where_they_happen() {
    use cotrackpro_voice::sim::anthropic::Reply;
    // This test polls /metrics, which shares the records API's per-key rate limit.
    let rig = Rig::start(&[
        ("READ_API_KEY", READ_KEY),
        ("RECORDS_RATE_LIMIT_PER_MIN", "10000"),
        ("RECORDS_RATE_LIMIT_PER_HOUR", "100000"),
    ]);
    let errors = "cotrackpro_provider_errors_total";
    let retries = "cotrackpro_provider_retries_total";
    let tts_failures = "cotrackpro_tts_failures_total";
    let before = scrape(&rig.server);
    // The first speech-to-text session drops after its first chunk: one reconnect.
    rig.sims
        .elevenlabs
        .stt()
        .push_fault(cotrackpro_voice::sim::elevenlabs_stt::Fault::Drop { after_chunks: 1 });

    // The model is overloaded once, then answers: one retry, of kind http.
    rig.sims.anthropic.push([
        Reply::Status {
            status: 529,
            kind: "overloaded_error".into(),
            retry_after_secs: Some(0),
        },
        Reply::Text("Thank you for waiting.".into()),
    ]);
    rig.script(&["Are you there", "Say something", "Look it up"]);
    let caller = rig.greeted();
    caller.say("Are you there");
    assert!(
        caller.wait_for_echoes(2, WAIT),
        "the answer after the retry"
    );
    let retried = "cotrackpro_provider_retries_total{provider=\"anthropic\",kind=\"http\"}";
    assert!(scrape(&rig.server).value(retried) > before.value(retried));

    // The voice fails the next piece twice: retried once, then a failure.
    rig.sims
        .anthropic
        .push([Reply::Text("This reply cannot be voiced today.".into())]);
    rig.sims.elevenlabs.tts().fail_next(2);
    caller.say("Say something");
    let after = wait_for(&rig.server, |after| {
        total(after, tts_failures, None) > total(&before, tts_failures, None)
    });

    // A tool call on a server with no tools configured answers an error.
    rig.sims.anthropic.push([
        Reply::ToolUse {
            preface: "Let me check.".into(),
            name: "search_docs".into(),
            input: serde_json::json!({"query": "custody"}),
        },
        Reply::Text("I could not look that up.".into()),
    ]);
    caller.say("Look it up");
    let tool_errors = "cotrackpro_tool_errors_total";
    let last = wait_for(&rig.server, |now| {
        total(now, tool_errors, None) > total(&before, tool_errors, None)
    });
    for (family, provider) in [
        (tts_failures, None),
        (errors, Some("elevenlabs_tts")),
        (retries, Some("elevenlabs_tts")),
        ("cotrackpro_stt_reconnects_total", None),
    ] {
        let (was, is) = (
            total(&before, family, provider),
            total(&after, family, provider),
        );
        assert!(is > was, "{family} {provider:?}: {was} -> {is}");
    }
    assert!(total(&last, tool_errors, None) > total(&before, tool_errors, None));
    let sid = caller.call_sid().to_string();
    caller.hang_up();
    rig.record_after_end(&sid);
}
