//! The thirteen CoTrackPro personas a caller can reach, the ElevenLabs voice each one speaks
//! with by default, and (in [`prompts`]) what each is told and says. A role that is unknown or missing never becomes an error the caller hears:
//! callers of [`Role::parse`] fall back to the configured default role.

pub mod prompts;

use std::fmt;

/// One CoTrackPro persona. The order is the original's (`src/core/roleSet.ts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Parent,
    Attorney,
    Gal,
    Judge,
    Therapist,
    SchoolCounselor,
    LawEnforcement,
    Mediator,
    Advocate,
    KidTeen,
    SocialWorker,
    Cps,
    Evaluator,
}

impl Role {
    /// Every role, in the original's order.
    pub const ALL: [Role; 13] = [
        Role::Parent,
        Role::Attorney,
        Role::Gal,
        Role::Judge,
        Role::Therapist,
        Role::SchoolCounselor,
        Role::LawEnforcement,
        Role::Mediator,
        Role::Advocate,
        Role::KidTeen,
        Role::SocialWorker,
        Role::Cps,
        Role::Evaluator,
    ];

    /// The wire name used in URLs, TwiML parameters, records and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Parent => "parent",
            Role::Attorney => "attorney",
            Role::Gal => "gal",
            Role::Judge => "judge",
            Role::Therapist => "therapist",
            Role::SchoolCounselor => "school_counselor",
            Role::LawEnforcement => "law_enforcement",
            Role::Mediator => "mediator",
            Role::Advocate => "advocate",
            Role::KidTeen => "kid_teen",
            Role::SocialWorker => "social_worker",
            Role::Cps => "cps",
            Role::Evaluator => "evaluator",
        }
    }

    /// Parses a wire name. Surrounding whitespace and letter case are forgiven (a hand-typed
    /// `?role=Attorney` in the Twilio console should not silently become the default persona).
    pub fn parse(text: &str) -> Option<Role> {
        let wanted = text.trim();
        Role::ALL
            .into_iter()
            .find(|role| role.as_str().eq_ignore_ascii_case(wanted))
    }

    /// The role names joined for error messages ("parent, attorney, …").
    pub fn allowed_list() -> String {
        Role::ALL.map(Role::as_str).join(", ")
    }

    /// The voice this role speaks with unless `VOICE_MAP` says otherwise. The ids are the
    /// original's defaults (`src/config/voices.ts`); roles without a voice of their own share one.
    pub fn default_voice_id(self) -> &'static str {
        match self {
            Role::Parent | Role::Advocate => "EXAVITQu4vr4xnSDxMaL",
            Role::Attorney | Role::LawEnforcement | Role::Cps => "pNInz6obpgDQGcFmaJgB",
            Role::Gal | Role::Mediator => "ErXwobaYiN019PkySvjV",
            Role::Judge | Role::Evaluator => "VR6AewLTigWG4xSOukaG",
            Role::Therapist | Role::SocialWorker => "21m00Tcm4TlvDq8ikWAM",
            Role::SchoolCounselor | Role::KidTeen => "AZnzlk1XvdvUeBnXmlld",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `id` has the shape of an ElevenLabs voice id. Voice ids end up in a URL path, so
/// anything else (`../../etc/passwd`) is refused before it gets near one.
pub fn is_valid_voice_id(id: &str) -> bool {
    (16..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_round_trips_through_its_wire_name() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::ALL.len(), 13);
    }

    #[test]
    fn parse_forgives_case_and_whitespace_but_nothing_else() {
        assert_eq!(Role::parse(" Attorney "), Some(Role::Attorney));
        assert_eq!(Role::parse("KID_TEEN"), Some(Role::KidTeen));
        assert_eq!(Role::parse("kid-teen"), None);
        assert_eq!(Role::parse(""), None);
        assert_eq!(Role::parse("\"><Hangup/>"), None);
    }

    #[test]
    fn default_voices_are_valid_ids() {
        for role in Role::ALL {
            assert!(is_valid_voice_id(role.default_voice_id()), "{role}");
        }
    }

    #[test]
    fn voice_id_shape() {
        assert!(is_valid_voice_id("2ydcbtd5sJZRYFMNgMVZ"));
        assert!(!is_valid_voice_id("../../../etc/passwd"));
        assert!(!is_valid_voice_id("short"));
        assert!(!is_valid_voice_id(&"a".repeat(33)));
    }
}
