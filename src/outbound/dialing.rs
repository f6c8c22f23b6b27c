//! Whether a number may be dialled: strict E.164, and its country in
//! `OUTBOUND_ALLOWED_COUNTRY_CODES`.
//!
//! `+1` is not one country. The North American Numbering Plan covers the United States, Canada,
//! US territories and about twenty Caribbean countries, whose numbers (+1 876 Jamaica, +1 809
//! the Dominican Republic, +1 284 the British Virgin Islands, …) look domestic but are billed
//! internationally — the classic targets of toll fraud. So a `+1` number's country is decided
//! by its area code: the non-US area codes are listed below; every other valid geographic
//! area code is the United States. US premium-rate codes (900, 976) are refused unless `*`.
//!
//! The area-code table is data, compiled from the North American Numbering Plan
//! Administrator's public list of area codes by location (nationalnanpa.com, "Area Code
//! Maps" and "Canadian and Caribbean area codes"), as of 2026; a newly opened overlay code
//! of Canada or the Caribbean needs a line here, or its numbers are treated as US.

use crate::config::CountryAllowList;

/// Non-US NANP area codes and their ISO 3166 country (US territories carry their own code:
/// an allow-list of `US` alone does not include Puerto Rico or Guam).
#[rustfmt::skip]
const NANP_AREA_CODES: &[(&str, &str)] = &[
    // Canada
    ("204", "CA"), ("226", "CA"), ("236", "CA"), ("249", "CA"), ("250", "CA"), ("257", "CA"),
    ("263", "CA"), ("289", "CA"), ("306", "CA"), ("343", "CA"), ("354", "CA"), ("365", "CA"),
    ("367", "CA"), ("368", "CA"), ("382", "CA"), ("387", "CA"), ("403", "CA"), ("416", "CA"),
    ("418", "CA"), ("428", "CA"), ("431", "CA"), ("437", "CA"), ("438", "CA"), ("450", "CA"),
    ("460", "CA"), ("468", "CA"), ("474", "CA"), ("506", "CA"), ("514", "CA"), ("519", "CA"),
    ("548", "CA"), ("579", "CA"), ("581", "CA"), ("584", "CA"), ("587", "CA"), ("604", "CA"),
    ("613", "CA"), ("639", "CA"), ("647", "CA"), ("672", "CA"), ("683", "CA"), ("705", "CA"),
    ("709", "CA"), ("742", "CA"), ("753", "CA"), ("778", "CA"), ("780", "CA"), ("782", "CA"),
    ("807", "CA"), ("819", "CA"), ("825", "CA"), ("867", "CA"), ("873", "CA"), ("879", "CA"),
    ("902", "CA"), ("905", "CA"), ("942", "CA"),
    // Caribbean and Atlantic countries
    ("242", "BS"), ("246", "BB"), ("264", "AI"), ("268", "AG"), ("284", "VG"), ("345", "KY"),
    ("441", "BM"), ("473", "GD"), ("649", "TC"), ("658", "JM"), ("664", "MS"), ("721", "SX"),
    ("758", "LC"), ("767", "DM"), ("784", "VC"), ("809", "DO"), ("829", "DO"), ("849", "DO"),
    ("868", "TT"), ("869", "KN"), ("876", "JM"),
    // US territories
    ("340", "VI"), ("670", "MP"), ("671", "GU"), ("684", "AS"), ("787", "PR"), ("939", "PR"),
];

/// US premium-rate area codes: never dialled unless every destination is allowed.
const NANP_PREMIUM: &[&str] = &["900", "976"];

/// Country calling codes outside the NANP (ITU-T E.164 assignments), longest match first.
#[rustfmt::skip]
const COUNTRY_CODES: &[(&str, &str)] = &[
    ("7", "RU"), ("20", "EG"), ("27", "ZA"), ("30", "GR"), ("31", "NL"), ("32", "BE"),
    ("33", "FR"), ("34", "ES"), ("36", "HU"), ("39", "IT"), ("40", "RO"), ("41", "CH"),
    ("43", "AT"), ("44", "GB"), ("45", "DK"), ("46", "SE"), ("47", "NO"), ("48", "PL"),
    ("49", "DE"), ("51", "PE"), ("52", "MX"), ("53", "CU"), ("54", "AR"), ("55", "BR"),
    ("56", "CL"), ("57", "CO"), ("58", "VE"), ("60", "MY"), ("61", "AU"), ("62", "ID"),
    ("63", "PH"), ("64", "NZ"), ("65", "SG"), ("66", "TH"), ("81", "JP"), ("82", "KR"),
    ("84", "VN"), ("86", "CN"), ("90", "TR"), ("91", "IN"), ("92", "PK"), ("93", "AF"),
    ("94", "LK"), ("95", "MM"), ("98", "IR"), ("351", "PT"), ("352", "LU"), ("353", "IE"),
    ("354", "IS"), ("356", "MT"), ("358", "FI"), ("372", "EE"), ("380", "UA"), ("420", "CZ"),
    ("421", "SK"), ("852", "HK"), ("880", "BD"), ("886", "TW"), ("966", "SA"), ("971", "AE"),
    ("972", "IL"),
];

/// Why a number may not be dialled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NotE164,
    /// A `+1` number whose area code or exchange cannot be a real line.
    InvalidNanp,
    UnknownCountry,
    PremiumRate,
    CountryNotAllowed {
        iso: String,
    },
}

impl Refusal {
    /// The sentence an API client gets.
    pub fn detail(&self, number: &str) -> String {
        match self {
            Refusal::NotE164 => {
                "Phone number must be E.164: + and country code, then up to 14 digits (e.g. +15551234567)".to_string()
            }
            Refusal::InvalidNanp => format!("{number} is not a valid North American number"),
            Refusal::UnknownCountry => {
                "Phone number's country code is not in the dialling table".to_string()
            }
            Refusal::PremiumRate => "Premium-rate numbers are never dialled".to_string(),
            Refusal::CountryNotAllowed { iso } => {
                format!("Numbers in {iso} are not in OUTBOUND_ALLOWED_COUNTRY_CODES")
            }
        }
    }
}

/// The ISO country of an E.164 number (`+` and digits), `None` if unknown.
pub fn country_of(e164: &str) -> Result<&'static str, Refusal> {
    let digits = e164.strip_prefix('+').ok_or(Refusal::NotE164)?;
    if let Some(national) = digits.strip_prefix('1') {
        // NPA-NXX-XXXX: area code and exchange start with 2–9.
        let b = national.as_bytes();
        if b.len() != 10 || !(b'2'..=b'9').contains(&b[0]) || !(b'2'..=b'9').contains(&b[3]) {
            return Err(Refusal::InvalidNanp);
        }
        let area = &national[..3];
        if area.ends_with("11") {
            return Err(Refusal::InvalidNanp);
        }
        if NANP_PREMIUM.contains(&area) {
            return Err(Refusal::PremiumRate);
        }
        return Ok(NANP_AREA_CODES
            .iter()
            .find(|(code, _)| *code == area)
            .map_or("US", |(_, iso)| iso));
    }
    (1..=3)
        .rev()
        .filter_map(|len| digits.get(..len))
        .find_map(|prefix| {
            COUNTRY_CODES
                .iter()
                .find(|(code, _)| *code == prefix)
                .map(|(_, iso)| *iso)
        })
        .ok_or(Refusal::UnknownCountry)
}

/// Checks `number` (as typed; it must already be E.164, no formatting) against `allowed`.
/// Returns the number and its country.
pub fn check(number: &str, allowed: &CountryAllowList) -> Result<(String, &'static str), Refusal> {
    let digits = number.strip_prefix('+').ok_or(Refusal::NotE164)?;
    let strict = (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0');
    if !strict {
        return Err(Refusal::NotE164);
    }
    match allowed {
        CountryAllowList::Any => {
            // Every valid number, premium-rate included: `*` means what it says.
            let iso = match country_of(number) {
                Ok(iso) => iso,
                Err(Refusal::InvalidNanp) => return Err(Refusal::InvalidNanp),
                Err(_) => "unknown",
            };
            Ok((number.to_string(), iso))
        }
        CountryAllowList::Only(list) => {
            let iso = country_of(number)?;
            if list.iter().any(|c| c == iso) {
                Ok((number.to_string(), iso))
            } else {
                Err(Refusal::CountryNotAllowed {
                    iso: iso.to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us_ca() -> CountryAllowList {
        CountryAllowList::Only(vec!["US".into(), "CA".into()])
    }

    #[test]
    fn nanp_numbers_belong_to_their_area_codes_country() {
        assert_eq!(country_of("+12125550100"), Ok("US"));
        assert_eq!(country_of("+14165550123"), Ok("CA"));
        assert_eq!(country_of("+18765550123"), Ok("JM"));
        assert_eq!(country_of("+18095550123"), Ok("DO"));
        assert_eq!(country_of("+12845550123"), Ok("VG"));
        assert_eq!(country_of("+17875550123"), Ok("PR"));
        assert_eq!(country_of("+19005550123"), Err(Refusal::PremiumRate));
        assert_eq!(country_of("+11235550123"), Err(Refusal::InvalidNanp));
        assert_eq!(country_of("+12121550100"), Err(Refusal::InvalidNanp));
        assert_eq!(country_of("+14115550100"), Err(Refusal::InvalidNanp));
        assert_eq!(country_of("+1212555010"), Err(Refusal::InvalidNanp));
        assert_eq!(country_of("+442071838750"), Ok("GB"));
        assert_eq!(country_of("+35312345678"), Ok("IE"));
        assert_eq!(country_of("+79161234567"), Ok("RU"));
        assert_eq!(country_of("+999123"), Err(Refusal::UnknownCountry));
    }

    #[test]
    fn the_allow_list_sees_through_the_shared_plus_one() {
        assert!(check("+12125550100", &us_ca()).is_ok());
        assert_eq!(
            check("+14165550123", &us_ca()),
            Ok(("+14165550123".into(), "CA"))
        );
        assert_eq!(
            check("+18765550123", &us_ca()),
            Err(Refusal::CountryNotAllowed { iso: "JM".into() })
        );
        let with_jm = CountryAllowList::Only(vec!["US".into(), "JM".into()]);
        assert!(check("+18765550123", &with_jm).is_ok());
        assert!(check("+14165550123", &with_jm).is_err());
        assert_eq!(
            check("+442071838750", &us_ca()),
            Err(Refusal::CountryNotAllowed { iso: "GB".into() })
        );
        assert_eq!(check("+19765550123", &us_ca()), Err(Refusal::PremiumRate));
        assert!(check("+19005550123", &CountryAllowList::Any).is_ok());
        assert!(check("+999123", &CountryAllowList::Any).is_ok());
    }

    #[test]
    fn only_strict_e164_is_dialled() {
        for bad in [
            "",
            "+",
            "12125550100",
            "+1 212 555 0100",
            "+0212555",
            "+1212555010x",
            "+1234567890123456",
        ] {
            assert_eq!(
                check(bad, &CountryAllowList::Any),
                Err(Refusal::NotE164),
                "{bad:?}"
            );
        }
        assert!(Refusal::NotE164.detail("x").contains("E.164"));
        assert!(Refusal::CountryNotAllowed { iso: "JM".into() }
            .detail("+1876")
            .contains("JM"));
    }

    #[test]
    fn every_table_entry_is_well_formed() {
        for (code, iso) in NANP_AREA_CODES {
            assert!(
                code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()),
                "{code}"
            );
            assert!(
                iso.len() == 2 && iso.bytes().all(|b| b.is_ascii_uppercase()),
                "{iso}"
            );
        }
        let mut codes: Vec<&str> = NANP_AREA_CODES.iter().map(|(c, _)| *c).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(
            codes.len(),
            NANP_AREA_CODES.len(),
            "no area code listed twice"
        );
        for (code, _) in COUNTRY_CODES {
            assert!(!code.starts_with('1') && !code.is_empty());
        }
    }
}
