//! Log output through `log` + `env_logger`: readable text by default, or with `LOG_FORMAT=json`
//! one JSON object per line (`ts`, `level`, `target`, `message`, then the event's fields such as
//! `callSid`) for journald and log shippers.
//!
//! Events that dashboards and alerts match on keep the original's names as their message
//! (`cost.call.summary`, `cost.rollup.daily`, `Invalid Twilio signature`, …); their data goes in
//! structured fields: `log::info!(callSid = sid; "cost.call.summary")`.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};

use crate::config::{LogConfig, LogFormat};

/// Installs the process-wide logger. `RUST_LOG`-style per-module filters are not offered: the
/// level comes from `LOG_LEVEL` alone, so what `check-config` prints is what runs.
pub fn init(config: &LogConfig) {
    let format = config.format;
    let timestamps = config.timestamps;
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(config.level)
        .target(env_logger::Target::Stderr)
        .write_style(env_logger::WriteStyle::Never)
        .format(move |buf, record| {
            let ts = timestamps.then(|| buf.timestamp_millis().to_string());
            let line = match format {
                LogFormat::Json => json_line(ts.as_deref(), record),
                LogFormat::Text => text_line(ts.as_deref(), record),
            };
            writeln!(buf, "{line}")
        });
    // A second init (tests that start several servers) keeps the first logger; that is fine.
    let _ = builder.try_init();
}

/// One record as a JSON object. Field values that are numbers or booleans stay so.
pub fn json_line(ts: Option<&str>, record: &log::Record<'_>) -> String {
    let mut object = serde_json::Map::new();
    if let Some(ts) = ts {
        object.insert("ts".into(), ts.into());
    }
    object.insert("level".into(), record.level().as_str().into());
    object.insert("target".into(), record.target().into());
    object.insert("message".into(), record.args().to_string().into());
    let mut fields = JsonFields(&mut object);
    let _ = record.key_values().visit(&mut fields);
    serde_json::Value::Object(object).to_string()
}

/// One record as `ts LEVEL target: message key=value …`; values with spaces are quoted.
pub fn text_line(ts: Option<&str>, record: &log::Record<'_>) -> String {
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
    line
}

struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let json = if let Some(b) = value.to_bool() {
            b.into()
        } else if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(n) = value.to_f64().and_then(serde_json::Number::from_f64) {
            serde_json::Value::Number(n)
        } else {
            value.to_string().into()
        };
        self.0.insert(key.as_str().to_string(), json);
        Ok(())
    }
}

struct TextFields<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for TextFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let value = value.to_string();
        if value.is_empty() || value.contains(|c: char| c.is_whitespace() || c == '"') {
            self.0.push_str(&format!(" {key}={value:?}"));
        } else {
            self.0.push_str(&format!(" {key}={value}"));
        }
        Ok(())
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
        let line = with_record(|r| json_line(Some("2026-11-24T06:00:00.000Z"), r));
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
        let line = with_record(|r| text_line(None, r));
        assert_eq!(
            line,
            "INFO  cotrackpro_voice::cost: cost.call.summary callSid=CA123 durationSecs=180 estimatedCostUsd=0.0342 note=\"two words\""
        );
    }
}
