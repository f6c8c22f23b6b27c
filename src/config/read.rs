//! What every section uses to read its variables and to report them: the [`Reader`] that
//! collects every problem (and warning) instead of stopping at the first, the key descriptors
//! that give a variable's name, default and range once, and the [`Report`] that lists effective
//! values for `check-config` with secrets redacted.

use std::fmt::Display;
use std::time::Duration;

use super::{BaseUrl, ConfigError, Env, Secret};

/// A whole-number variable: its name, its default and its allowed range (inclusive).
pub(super) struct Whole {
    pub name: &'static str,
    pub default: u64,
    pub min: u64,
    pub max: u64,
}

/// A decimal variable: its name, its default and its allowed range (inclusive, finite).
pub(super) struct Float {
    pub name: &'static str,
    pub default: f64,
    pub min: f64,
    pub max: f64,
}

/// A free-text variable with a fixed default.
pub(super) struct Text {
    pub name: &'static str,
    pub default: &'static str,
}

/// A provider base URL: its name, its default and the schemes it may use.
pub(super) struct Url {
    pub name: &'static str,
    pub default: &'static str,
    pub schemes: &'static [&'static str],
}

/// The schemes of an HTTP provider URL (plain `http` is for simulators and local proxies; see
/// the production rule in [`super::Config::from_env`]).
pub(super) const HTTP_SCHEMES: &[&str] = &["https", "http"];
/// The schemes of a WebSocket provider URL.
pub(super) const WS_SCHEMES: &[&str] = &["wss", "ws"];

/// Collects errors and warnings while reading; every getter returns a usable placeholder on
/// error so that reading goes on and all problems are reported together.
pub(super) struct Reader<'a> {
    env: &'a Env,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    /// Every variable a section looked at, in order (so a test can check each is reported).
    looked_at: Vec<String>,
}

impl<'a> Reader<'a> {
    pub fn new(env: &'a Env) -> Reader<'a> {
        Reader {
            env,
            errors: Vec::new(),
            warnings: Vec::new(),
            looked_at: Vec::new(),
        }
    }

    /// The problems and the warnings, in the order they were found.
    pub fn finish(self) -> (Vec<ConfigError>, Vec<String>) {
        (self.errors, self.warnings)
    }

    #[cfg(test)]
    pub fn looked_at(&self) -> &[String] {
        &self.looked_at
    }

    pub fn error(&mut self, key: &str, message: impl Into<String>) {
        self.errors.push(ConfigError::new(key, message));
    }

    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    pub fn has_error(&self, key: &str) -> bool {
        self.errors.iter().any(|e| e.key == key)
    }

    /// The raw value of `key` (an empty value counts as unset).
    pub fn raw(&mut self, key: &str) -> Option<&'a str> {
        if !self.looked_at.iter().any(|k| k == key) {
            self.looked_at.push(key.to_string());
        }
        self.env.get(key)
    }

    pub fn is_set(&mut self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// The first directory of systemd's `STATE_DIRECTORY=` (the sandbox's writable place).
    pub fn state_directory(&mut self) -> Option<&'a str> {
        self.raw("STATE_DIRECTORY")
            .and_then(|dirs| dirs.split(':').next())
    }

    pub fn parse<T>(
        &mut self,
        key: &str,
        default: T,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        match self.raw(key) {
            None => default,
            Some(raw) => match f(raw.trim()) {
                Ok(value) => value,
                Err(message) => {
                    self.error(key, message);
                    default
                }
            },
        }
    }

    pub fn optional<T>(
        &mut self,
        key: &str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let raw = self.raw(key)?.trim();
        match f(raw) {
            Ok(value) => Some(value),
            Err(message) => {
                self.error(key, message);
                None
            }
        }
    }

    pub fn string(&mut self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or(default).trim().to_string()
    }

    pub fn text(&mut self, key: &Text) -> String {
        self.string(key.name, key.default)
    }

    pub fn secret(&mut self, key: &str) -> Option<Secret> {
        // Secrets are taken as written (no trimming inside), but surrounding whitespace from a
        // copy-paste is never part of a key.
        self.raw(key).map(|v| Secret::new(v.trim()))
    }

    pub fn whole(&mut self, key: &Whole) -> u64 {
        let (min, max) = (key.min, key.max);
        self.parse(key.name, key.default, |v| match v.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(format!(
                "must be a whole number from {min} to {max}, got {v:?}"
            )),
        })
    }

    pub fn millis(&mut self, key: &Whole) -> Duration {
        Duration::from_millis(self.whole(key))
    }

    pub fn secs(&mut self, key: &Whole) -> Duration {
        Duration::from_secs(self.whole(key))
    }

    pub fn float(&mut self, key: &Float) -> f64 {
        let (min, max) = (key.min, key.max);
        self.parse(key.name, key.default, |v| match v.parse::<f64>() {
            Ok(n) if n.is_finite() && n >= min && n <= max => Ok(n),
            _ => Err(format!("must be a number from {min} to {max}, got {v:?}")),
        })
    }

    /// A boolean and whether it was set explicitly.
    pub fn flag(&mut self, key: &str, default: bool) -> (bool, bool) {
        let set = self.is_set(key);
        let value = self.parse(key, default, |v| match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(format!("must be true or false, got {v:?}")),
        });
        (value, set)
    }

    pub fn url(&mut self, key: &Url) -> BaseUrl {
        let fallback =
            BaseUrl::parse(key.default, key.schemes).expect("built-in default URLs are valid");
        self.parse(key.name, fallback, |v| BaseUrl::parse(v, key.schemes))
    }
}

/// The effective values, as `(variable, value)` rows for `check-config`. A secret can only be
/// shown as set or not set.
#[derive(Default)]
pub(super) struct Report {
    rows: Vec<(&'static str, String)>,
}

impl Report {
    pub fn into_rows(self) -> Vec<(&'static str, String)> {
        self.rows
    }

    pub fn value(&mut self, key: &'static str, value: impl Display) {
        self.rows.push((key, value.to_string()));
    }

    pub fn optional(&mut self, key: &'static str, value: Option<impl Display>) {
        match value {
            Some(value) => self.value(key, value),
            None => self.value(key, "[not set]"),
        }
    }

    pub fn secret(&mut self, key: &'static str, value: &Option<Secret>) {
        let shown = match value {
            Some(_) => "[set, redacted]",
            None => "[not set]",
        };
        self.value(key, shown);
    }

    pub fn millis(&mut self, key: &'static str, value: Duration) {
        self.value(key, value.as_millis());
    }

    pub fn secs(&mut self, key: &'static str, value: Duration) {
        self.value(key, value.as_secs());
    }
}
