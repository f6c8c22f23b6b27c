//! [`Env`], the raw variables the configuration is read from: an optional env file, overridden
//! by the process environment. The one place that reads `std::env`.

use std::collections::BTreeMap;
use std::path::Path;

use super::{env_file, ConfigError};

/// The raw variables the configuration is built from: the env file's, overridden by the process
/// environment's (so `LOG_LEVEL=debug cotrackpro-voice serve --env-file …` does what it says).
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// The process environment, plus `env_file` underneath it when one is named.
    pub fn load(env_file: Option<&Path>) -> Result<Env, Vec<ConfigError>> {
        let mut env = Env::default();
        if let Some(path) = env_file {
            let text = std::fs::read_to_string(path).map_err(|err| {
                vec![ConfigError::new(
                    "--env-file",
                    format!("cannot read {}: {err}", path.display()),
                )]
            })?;
            let pairs = env_file::parse(&text).map_err(|errors| {
                errors
                    .into_iter()
                    .map(|err| ConfigError::new("--env-file", format!("{}: {err}", path.display())))
                    .collect::<Vec<_>>()
            })?;
            env.vars.extend(pairs);
        }
        // Variables whose value is not UTF-8 cannot be ours; they are skipped, not fatal.
        env.vars.extend(
            std::env::vars_os().filter_map(|(key, value)| {
                Some((key.into_string().ok()?, value.into_string().ok()?))
            }),
        );
        Ok(env)
    }

    /// An environment made of exactly these pairs (tests, embedding).
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Sets one variable (tests, and the `demo` command wiring simulators in).
    pub fn set(&mut self, key: &str, value: &str) {
        self.vars.insert(key.to_string(), value.to_string());
    }

    /// The value of `key`; an empty value counts as unset, as in the original.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }
}
