//! Log output through `log` + `env_logger`: readable text by default, or with `LOG_FORMAT=json`
//! one JSON object per line (`ts`, `level`, `target`, `message`, then the event's fields such as
//! `callSid`) for journald and log shippers.
//!
//! Events that dashboards and alerts match on keep the original's names as their message
//! (`cost.call.summary`, `cost.rollup.daily`, `Invalid Twilio signature`, …); their data goes in
//! structured fields: `log::info!(callSid = sid; "cost.call.summary")`.
//!
//! Fields keep their types: numbers and booleans are JSON numbers and booleans, `None` is
//! `null`. A list or an object goes through [`with_fields`] (the `log` crate's own structured
//! values need its `kv_serde` feature, which brings in more than a dozen crates). Every line a
//! call's threads write carries its `callSid` ([`enter_call`]). Under journald each line starts
//! with its `<N>` syslog priority, so `journalctl -p warning` filters.

use std::cell::RefCell;
use std::io::Write;
use std::sync::Arc;

use log::kv::{Key, Value, VisitSource, VisitValue};
use serde_json::Value as Json;

use crate::config::{LogConfig, LogFormat};

/// Installs the process-wide logger. `RUST_LOG`-style per-module filters are not offered: the
/// level comes from `LOG_LEVEL` alone, so what `check-config` prints is what runs.
pub fn init(config: &LogConfig) {
    let format = config.format;
    let timestamps = config.timestamps;
    let journald = config
        .journal_stream
        .as_deref()
        .is_some_and(stderr_is_journal);
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(config.level)
        .target(env_logger::Target::Stderr)
        .write_style(env_logger::WriteStyle::Never)
        .format(move |buf, record| {
            let ts = timestamps.then(|| buf.timestamp_millis().to_string());
            let extra = Extra::current();
            let line = match format {
                LogFormat::Json => json_line(ts.as_deref(), record, &extra),
                LogFormat::Text => text_line(ts.as_deref(), record, &extra),
            };
            if journald {
                writeln!(buf, "{}{line}", priority_prefix(record.level()))
            } else {
                writeln!(buf, "{line}")
            }
        });
    // A second init (tests that start several servers) keeps the first logger; that is fine.
    let _ = builder.try_init();
}

/// The sd-daemon prefix journald reads as the line's priority (`sd-daemon.h`): `<3>` err,
/// `<4>` warning, `<6>` info, `<7>` debug.
pub fn priority_prefix(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "<3>",
        log::Level::Warn => "<4>",
        log::Level::Info => "<6>",
        log::Level::Debug | log::Level::Trace => "<7>",
    }
}

/// Whether stderr is the journal's stream: systemd sets `JOURNAL_STREAM=device:inode` of the
/// socket it connected, and a process whose stderr was redirected since (a shell's `2>file`)
/// inherits the variable but not the socket, so both are compared, as sd_journal documents.
fn stderr_is_journal(journal_stream: &str) -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some(expected) = parse_journal_stream(journal_stream) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|meta| (meta.dev(), meta.ino()) == expected)
}

/// `JOURNAL_STREAM`'s `device:inode`, both decimal.
pub fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

thread_local! {
    /// The CallSid of the call this thread works for ([`enter_call`]).
    static CALL_SID: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
    /// Typed fields for the lines logged inside [`with_fields`].
    static FIELDS: RefCell<Vec<(&'static str, Json)>> = const { RefCell::new(Vec::new()) };
}

/// Marks the current thread as working for the call `call_sid` (`None`: for no call) until the
/// guard drops: every line it logs then carries `callSid` unless the line names one itself.
/// A call's threads are started by [`crate::calls::CallSlot::spawn`], which hands the marking
/// on with [`current_call`].
pub fn enter_call(call_sid: Option<Arc<str>>) -> CallGuard {
    let previous = CALL_SID.with(|slot| slot.replace(call_sid));
    CallGuard { previous }
}

/// The call the current thread works for, to hand to the threads it starts.
pub fn current_call() -> Option<Arc<str>> {
    CALL_SID.with(|slot| slot.borrow().clone())
}

/// Restores the thread's previous call marking when dropped.
#[must_use = "the marking ends when the guard drops"]
pub struct CallGuard {
    previous: Option<Arc<str>>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        CALL_SID.with(|slot| *slot.borrow_mut() = previous);
    }
}

/// Runs `f` with `fields` added to every line it logs on this thread: the way to log a list or
/// an object as JSON (`byRole`, `tools`), which `log`'s key-values carry only as text.
///
/// ```ignore
/// logging::with_fields(&[("tools", serde_json::json!(names))], || {
///     log::info!(callSid = sid; "call.tools")
/// });
/// ```
pub fn with_fields<R>(fields: &[(&'static str, Json)], f: impl FnOnce() -> R) -> R {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            FIELDS.with(|slot| slot.borrow_mut().truncate(self.0));
        }
    }
    let _restore = Restore(FIELDS.with(|slot| {
        let mut slot = slot.borrow_mut();
        let before = slot.len();
        slot.extend(fields.iter().cloned());
        before
    }));
    f()
}

/// What the logging thread adds to a record: the call it works for and the scoped fields.
#[derive(Clone, Debug, Default)]
pub struct Extra {
    pub call_sid: Option<Arc<str>>,
    pub fields: Vec<(&'static str, Json)>,
}

impl Extra {
    /// The current thread's.
    pub fn current() -> Extra {
        Extra {
            call_sid: current_call(),
            fields: FIELDS.with(|slot| slot.borrow().clone()),
        }
    }

    /// The fields a record does not carry itself, in order: the scoped ones, then `callSid`.
    fn missing_from(&self, record: &log::Record<'_>) -> Vec<(&'static str, Json)> {
        let kvs = record.key_values();
        let mut extra: Vec<(&'static str, Json)> = self
            .fields
            .iter()
            .filter(|(key, _)| kvs.get(Key::from_str(key)).is_none())
            .cloned()
            .collect();
        if let Some(sid) = &self.call_sid {
            if kvs.get(Key::from_str("callSid")).is_none() {
                extra.push(("callSid", Json::from(sid.as_ref())));
            }
        }
        extra
    }
}

/// One record as a JSON object. Field values that are numbers or booleans stay so.
pub fn json_line(ts: Option<&str>, record: &log::Record<'_>, extra: &Extra) -> String {
    let mut object = serde_json::Map::new();
    if let Some(ts) = ts {
        object.insert("ts".into(), ts.into());
    }
    object.insert("level".into(), record.level().as_str().into());
    object.insert("target".into(), record.target().into());
    object.insert("message".into(), record.args().to_string().into());
    let mut fields = JsonFields(&mut object);
    let _ = record.key_values().visit(&mut fields);
    for (key, value) in extra.missing_from(record) {
        object.insert(key.to_string(), value);
    }
    Json::Object(object).to_string()
}

/// One record as `ts LEVEL target: message key=value …`; values with spaces are quoted, lists
/// and objects are written as compact JSON.
pub fn text_line(ts: Option<&str>, record: &log::Record<'_>, extra: &Extra) -> String {
    let mut line = String::new();
    if let Some(ts) = ts {
        line.push_str(ts);
        line.push(' ');
    }
    line.push_str(&format!(
        "{:<5} {}: {}",
        record.level(),
        record.target(),
        record.args()
    ));
    let mut fields = TextFields(&mut line);
    let _ = record.key_values().visit(&mut fields);
    for (key, value) in extra.missing_from(record) {
        push_text_field(&mut line, key, &value);
    }
    one_line(line)
}

/// `line` with its line breaks written as `\n` and `\r`: a message or field that carries a
/// provider's or a caller's text must not start a line of its own in the log (a forged entry).
fn one_line(line: String) -> String {
    if !line.contains(['\n', '\r']) {
        return line;
    }
    line.replace('\n', "\\n").replace('\r', "\\r")
}

/// A field's value as JSON: its own type for numbers, booleans and `None` (null); its text for
/// the rest.
fn to_json(value: &Value<'_>) -> Json {
    struct ToJson(Option<Json>);
    impl<'v> VisitValue<'v> for ToJson {
        fn visit_any(&mut self, value: Value<'_>) -> Result<(), log::kv::Error> {
            self.0 = Some(Json::from(value.to_string()));
            Ok(())
        }
        fn visit_null(&mut self) -> Result<(), log::kv::Error> {
            self.0 = Some(Json::Null);
            Ok(())
        }
        fn visit_u64(&mut self, value: u64) -> Result<(), log::kv::Error> {
            self.0 = Some(value.into());
            Ok(())
        }
        fn visit_i64(&mut self, value: i64) -> Result<(), log::kv::Error> {
            self.0 = Some(value.into());
            Ok(())
        }
        fn visit_u128(&mut self, value: u128) -> Result<(), log::kv::Error> {
            self.0 =
                Some(u64::try_from(value).map_or_else(|_| value.to_string().into(), Json::from));
            Ok(())
        }
        fn visit_i128(&mut self, value: i128) -> Result<(), log::kv::Error> {
            self.0 =
                Some(i64::try_from(value).map_or_else(|_| value.to_string().into(), Json::from));
            Ok(())
        }
        fn visit_f64(&mut self, value: f64) -> Result<(), log::kv::Error> {
            // NaN and the infinities have no JSON number: they stay readable as text.
            self.0 = Some(
                serde_json::Number::from_f64(value)
                    .map_or_else(|| value.to_string().into(), Json::Number),
            );
            Ok(())
        }
        fn visit_bool(&mut self, value: bool) -> Result<(), log::kv::Error> {
            self.0 = Some(value.into());
            Ok(())
        }
        fn visit_str(&mut self, value: &str) -> Result<(), log::kv::Error> {
            self.0 = Some(value.into());
            Ok(())
        }
        fn visit_char(&mut self, value: char) -> Result<(), log::kv::Error> {
            self.0 = Some(value.to_string().into());
            Ok(())
        }
    }
    let mut visitor = ToJson(None);
    let _ = value.visit(&mut visitor);
    visitor.0.unwrap_or_else(|| Json::from(value.to_string()))
}

struct JsonFields<'a>(&'a mut serde_json::Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        self.0.insert(key.as_str().to_string(), to_json(&value));
        Ok(())
    }
}

struct TextFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for TextFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        push_text_field(self.0, key.as_str(), &to_json(&value));
        Ok(())
    }
}

/// ` key=value`: a string as it is (quoted when it has spaces or quotes), anything else as JSON.
fn push_text_field(line: &mut String, key: &str, value: &Json) {
    match value {
        Json::String(text)
            if text.is_empty() || text.contains(|c: char| c.is_whitespace() || c == '"') =>
        {
            line.push_str(&format!(" {key}={text:?}"));
        }
        Json::String(text) => line.push_str(&format!(" {key}={text}")),
        other => line.push_str(&format!(" {key}={other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_record<R>(f: impl FnOnce(&log::Record<'_>) -> R) -> R {
        let kvs: [(&str, Value<'_>); 4] = [
            ("callSid", Value::from("CA123")),
            ("durationSecs", Value::from(180u64)),
            ("estimatedCostUsd", Value::from(0.0342f64)),
            ("note", Value::from("two words")),
        ];
        let record = log::Record::builder()
            .level(log::Level::Info)
            .target("cotrackpro_voice::cost")
            .args(format_args!("cost.call.summary"))
            .key_values(&kvs)
            .build();
        f(&record)
    }

    #[test]
    fn json_lines_carry_fields_with_their_types() {
        let line =
            with_record(|r| json_line(Some("2026-11-24T06:00:00.000Z"), r, &Extra::default()));
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["target"], "cotrackpro_voice::cost");
        assert_eq!(value["message"], "cost.call.summary");
        assert_eq!(value["callSid"], "CA123");
        assert_eq!(value["durationSecs"], 180);
        assert_eq!(value["estimatedCostUsd"], 0.0342);
        assert_eq!(value["ts"], "2026-11-24T06:00:00.000Z");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn text_lines_quote_values_with_spaces() {
        let line = with_record(|r| text_line(None, r, &Extra::default()));
        assert_eq!(
            line,
            "INFO  cotrackpro_voice::cost: cost.call.summary callSid=CA123 durationSecs=180 estimatedCostUsd=0.0342 note=\"two words\""
        );
    }

    #[test]
    fn a_text_line_stays_one_line_whatever_its_message_or_fields_carry() {
        let kvs: [(&str, Value<'_>); 1] = [("error", Value::from("bad\nINFO forged: line"))];
        let record = log::Record::builder()
            .args(format_args!("provider said: oops\r\nWARN also forged"))
            .level(log::Level::Warn)
            .key_values(&kvs)
            .build();
        let text = text_line(None, &record, &Extra::default());
        assert!(!text.contains('\n') && !text.contains('\r'), "{text:?}");
        assert!(text.contains("oops\\r\\nWARN also forged"), "{text}");
        assert!(text.contains("bad\\nINFO forged: line"), "{text}");
    }

    #[test]
    fn none_is_null_and_some_is_the_number() {
        let (some, none): (Option<u64>, Option<u64>) = (Some(12), None);
        let kvs: [(&str, Value<'_>); 2] = [
            ("callDuration", log::kv::ToValue::to_value(&some)),
            ("answeredAfter", log::kv::ToValue::to_value(&none)),
        ];
        let record = log::Record::builder()
            .args(format_args!("Call status update"))
            .key_values(&kvs)
            .build();
        let json: Json =
            serde_json::from_str(&json_line(None, &record, &Extra::default())).unwrap();
        assert_eq!(json["callDuration"], 12);
        assert!(json["answeredAfter"].is_null());
        let text = text_line(None, &record, &Extra::default());
        assert!(
            text.ends_with("callDuration=12 answeredAfter=null"),
            "{text}"
        );
    }

    #[test]
    fn the_call_and_scoped_fields_are_added_unless_the_line_has_them() {
        let extra = Extra {
            call_sid: Some(Arc::from("CAthread")),
            fields: vec![("tools", serde_json::json!(["search", "lookup"]))],
        };
        let record = log::Record::builder()
            .args(format_args!("call.tools"))
            .build();
        let json: Json = serde_json::from_str(&json_line(None, &record, &extra)).unwrap();
        assert_eq!(json["callSid"], "CAthread");
        assert_eq!(json["tools"], serde_json::json!(["search", "lookup"]));
        assert_eq!(
            text_line(None, &record, &extra),
            "INFO  : call.tools tools=[\"search\",\"lookup\"] callSid=CAthread"
        );
        // The line's own callSid wins (a webhook handled on a thread of no call, or another).
        let json: Json =
            with_record(|r| serde_json::from_str(&json_line(None, r, &extra))).unwrap();
        assert_eq!(json["callSid"], "CA123");
    }

    #[test]
    fn the_thread_marking_and_the_scoped_fields_end_with_their_scope() {
        assert!(Extra::current().call_sid.is_none());
        {
            let _call = enter_call(Some(Arc::from("CAouter")));
            let inner = with_fields(&[("byRole", serde_json::json!({"parent": 1}))], || {
                let _nested = enter_call(Some(Arc::from("CAinner")));
                Extra::current()
            });
            assert_eq!(inner.call_sid.as_deref(), Some("CAinner"));
            assert_eq!(inner.fields.len(), 1);
            let after = Extra::current();
            assert_eq!(after.call_sid.as_deref(), Some("CAouter"));
            assert!(after.fields.is_empty());
            // A thread started by this one starts unmarked: the marking is handed on explicitly.
            let handed = current_call();
            let seen = std::thread::spawn(move || {
                let before = current_call();
                let _call = enter_call(handed);
                (before, current_call())
            })
            .join()
            .unwrap();
            assert_eq!(seen.0, None);
            assert_eq!(seen.1.as_deref(), Some("CAouter"));
        }
        assert!(Extra::current().call_sid.is_none());
    }

    #[test]
    fn priorities_follow_sd_daemon() {
        assert_eq!(priority_prefix(log::Level::Error), "<3>");
        assert_eq!(priority_prefix(log::Level::Warn), "<4>");
        assert_eq!(priority_prefix(log::Level::Info), "<6>");
        assert_eq!(priority_prefix(log::Level::Debug), "<7>");
        assert_eq!(priority_prefix(log::Level::Trace), "<7>");
    }

    #[test]
    fn journal_stream_is_device_colon_inode() {
        assert_eq!(parse_journal_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_journal_stream("8:"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
        assert_eq!(parse_journal_stream("812345"), None);
        // Whatever stderr is under the test runner, it is not an inode that does not exist.
        assert!(!stderr_is_journal("0:0"));
        assert!(!stderr_is_journal("garbage"));
    }
}
