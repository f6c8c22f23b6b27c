//! Transfers to a person: the number each persona's calls are handed to (`TRANSFER_NUMBERS`,
//! a JSON object of role to E.164 number, `default` for every role not named) and what the
//! caller hears first (`TRANSFER_PHRASE`). Without a number for a call's role, the call offers
//! no transfer at all.

use std::collections::BTreeMap;

use super::read::{Reader, Report};
use crate::personas::Role;
use crate::phone;

const TRANSFER_NUMBERS: &str = "TRANSFER_NUMBERS";
const TRANSFER_PHRASE: &str = "TRANSFER_PHRASE";
/// What the caller hears before the transfer, unless `TRANSFER_PHRASE` says otherwise.
pub const DEFAULT_TRANSFER_PHRASE: &str =
    "I'm connecting you with a person now. Please stay on the line.";
/// The longest phrase accepted: a sentence or two, spoken before the caller is handed over.
const MAX_PHRASE_CHARS: usize = 300;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferConfig {
    /// The number for each role named in `TRANSFER_NUMBERS` (E.164).
    pub numbers: BTreeMap<Role, String>,
    /// The number for every other role (the `default` key), if any.
    pub default: Option<String>,
    pub phrase: String,
}

impl Default for TransferConfig {
    fn default() -> TransferConfig {
        TransferConfig {
            numbers: BTreeMap::new(),
            default: None,
            phrase: DEFAULT_TRANSFER_PHRASE.to_string(),
        }
    }
}

impl TransferConfig {
    /// The number a call of `role` is transferred to, if it may be transferred.
    pub fn number_for(&self, role: Role) -> Option<&str> {
        self.numbers
            .get(&role)
            .or(self.default.as_ref())
            .map(String::as_str)
    }

    pub(super) fn read(r: &mut Reader<'_>) -> TransferConfig {
        let (numbers, default) = r.parse(TRANSFER_NUMBERS, (BTreeMap::new(), None), parse_numbers);
        let phrase = r.parse(TRANSFER_PHRASE, DEFAULT_TRANSFER_PHRASE.to_string(), |v| {
            if v.is_empty() {
                Err("must not be empty (leave it unset for the default)".to_string())
            } else if v.chars().count() > MAX_PHRASE_CHARS {
                Err(format!("must be at most {MAX_PHRASE_CHARS} characters"))
            } else if v.chars().any(char::is_control) {
                Err("must be one line of plain text".to_string())
            } else {
                Ok(v.to_string())
            }
        });
        TransferConfig {
            numbers,
            default,
            phrase,
        }
    }

    pub(super) fn report(&self, out: &mut Report) {
        let mut entries: Vec<String> = self
            .numbers
            .iter()
            .map(|(role, number)| format!("{role}={number}"))
            .collect();
        if let Some(number) = &self.default {
            entries.push(format!("default={number}"));
        }
        if entries.is_empty() {
            out.value(TRANSFER_NUMBERS, "[not set: no transfers]");
        } else {
            out.value(TRANSFER_NUMBERS, entries.join(","));
        }
        out.value(TRANSFER_PHRASE, &self.phrase);
    }
}

type Numbers = (BTreeMap<Role, String>, Option<String>);

fn parse_numbers(v: &str) -> Result<Numbers, String> {
    let map: BTreeMap<String, String> = serde_json::from_str(v).map_err(|err| {
        format!("must be a JSON object of role to E.164 number, e.g. {{\"parent\":\"+15551234567\",\"default\":\"+15557654321\"}}: {err}")
    })?;
    let mut numbers = BTreeMap::new();
    let mut default = None;
    let mut problems = Vec::new();
    for (key, number) in map {
        let Some(normalized) = phone::normalize(&number) else {
            problems.push(format!("{key}: {number:?} is not an E.164 number"));
            continue;
        };
        if key == "default" {
            default = Some(normalized);
            continue;
        }
        match Role::parse(&key) {
            Some(role) => {
                numbers.insert(role, normalized);
            }
            None => problems.push(format!("unknown role {key:?}")),
        }
    }
    if problems.is_empty() {
        Ok((numbers, default))
    } else {
        Err(format!(
            "{} (keys: default, {})",
            problems.join("; "),
            Role::allowed_list()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_has_its_own_number_or_the_default() {
        let (numbers, default) =
            parse_numbers(r#"{"attorney":"+1 (555) 123-4567","default":"+15557654321"}"#)
                .expect("valid");
        let config = TransferConfig {
            numbers,
            default,
            ..TransferConfig::default()
        };
        assert_eq!(config.number_for(Role::Attorney), Some("+15551234567"));
        assert_eq!(config.number_for(Role::Parent), Some("+15557654321"));
        assert_eq!(TransferConfig::default().number_for(Role::Parent), None);
    }

    fn load(
        extra: &[(&str, &str)],
    ) -> Result<crate::config::Config, Vec<crate::config::ConfigError>> {
        let mut env = crate::config::Env::from_pairs([("SERVER_DOMAIN", "voice.example.com")]);
        for (key, value) in extra {
            env.set(key, value);
        }
        crate::config::Config::from_env(&env)
    }

    #[test]
    fn the_settings_are_validated_and_shown_by_check_config() {
        let errors = load(&[
            ("TRANSFER_NUMBERS", r#"{"parent":"12"}"#),
            ("TRANSFER_PHRASE", "two\nlines"),
        ])
        .expect_err("refused");
        assert!(errors.iter().any(|e| e.key == TRANSFER_NUMBERS));
        assert!(errors.iter().any(|e| e.key == TRANSFER_PHRASE));
        let config = load(&[("TRANSFER_NUMBERS", r#"{"default":"+15557654321"}"#)]).expect("valid");
        let rows = config.effective();
        let shown = |key: &str| rows.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
        assert_eq!(
            shown(TRANSFER_NUMBERS).as_deref(),
            Some("default=+15557654321")
        );
        assert_eq!(
            shown(TRANSFER_PHRASE).as_deref(),
            Some(DEFAULT_TRANSFER_PHRASE)
        );
        let none = load(&[]).expect("valid");
        assert_eq!(none.calls.transfer.number_for(Role::Parent), None);
    }

    #[test]
    fn bad_numbers_and_unknown_roles_are_each_reported() {
        let err =
            parse_numbers(r#"{"pirate":"+15551234567","parent":"555-1234"}"#).expect_err("refused");
        assert!(err.contains("unknown role \"pirate\""), "{err}");
        assert!(
            err.contains("parent: \"555-1234\" is not an E.164 number"),
            "{err}"
        );
        assert!(parse_numbers("[1]").is_err());
    }
}
