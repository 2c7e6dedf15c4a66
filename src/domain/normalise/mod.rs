//! Normalising what ticket systems (Zendesk, Freshdesk, Jira Service
//! Management, Zammad) send in their own webhook payloads into what our
//! validated types take: time zones by Rails name, phone numbers in local
//! form, locales as language names, comment bodies in HTML or Atlassian
//! Document Format. Pure functions: each accepts any input, never panics,
//! and answers `None` (or an empty string) for what it cannot read.

mod adf;
mod entities;
mod html;
mod rails_zones;
mod text;

use chrono_tz::{TZ_VARIANTS, Tz};

use super::{E164, Locale};
use rails_zones::{RAILS_LEGACY_ZONES, RAILS_ZONES};

pub use adf::adf_to_text;
pub use html::html_to_text;

/// Longer input than this is not a name, number or tag we could read.
const MAX_FIELD: usize = 128;

/// A time zone by IANA name (`"Europe/Warsaw"`, in any letter case) or by
/// the Rails (`ActiveSupport::TimeZone`) name Rails-built help desks send
/// (`"Eastern Time (US & Canada)"`, `"Chennai"`, `"Mid-Atlantic"`, in any
/// letter case, also as Rails displays it: `"(GMT-05:00) Eastern Time (US &
/// Canada)"`), including three names older Rails versions had. Surrounding
/// whitespace is ignored; anything else is `None`.
pub fn time_zone(name: &str) -> Option<Tz> {
    let name = name.trim();
    if name.is_empty() || name.len() > MAX_FIELD {
        return None;
    }
    // Rails' `TimeZone#to_s`: "(GMT+05:30) Chennai".
    let name = match name
        .strip_prefix("(GMT")
        .or_else(|| name.strip_prefix("(UTC"))
    {
        Some(rest) => rest.split_once(')').map_or(name, |(_, n)| n.trim()),
        None => name,
    };
    let rails = RAILS_ZONES
        .iter()
        .chain(RAILS_LEGACY_ZONES)
        .find(|(rails, _)| rails.eq_ignore_ascii_case(name));
    if let Some((_, iana)) = rails {
        return iana.parse().ok();
    }
    name.parse().ok().or_else(|| {
        TZ_VARIANTS
            .iter()
            .find(|tz| tz.name().eq_ignore_ascii_case(name))
            .copied()
    })
}

/// A phone number as people write it, in E.164. Accepts international
/// form (`"+48 601 234 567"`), `00` in place of `+` (`"00 48 601234567"`,
/// `"0061 2 1234 7777"`), and, given the ISO 3166 code of the region to
/// read it in (`"US"`, `"pl"`), national form (`"(212) 555-0143"`, `"0601
/// 234 567"` with a trunk `0` where the country has none). Digits, spaces
/// and `+ - ( ) . /` only, at most 20 digits; an unknown region is ignored.
/// `None` unless the number is valid for its country's numbering plan.
pub fn phone(raw: &str, default_region: Option<&str>) -> Option<E164> {
    let raw = raw.trim();
    let raw = raw.strip_prefix("tel:").unwrap_or(raw).trim();
    let digits = raw.bytes().filter(u8::is_ascii_digit).count();
    if raw.len() > MAX_FIELD
        || !(3..=20).contains(&digits)
        || !raw
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_whitespace() || "+-()./".contains(c))
        || raw.chars().skip(1).any(|c| c == '+')
    {
        return None;
    }
    let region = default_region
        .map(|r| r.trim().to_ascii_uppercase())
        .and_then(|r| r.parse::<phonenumber::country::Id>().ok());
    // Any Unicode space (a no-break space from a web form) as ASCII.
    let raw: String = raw
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    let mut candidates = vec![raw.clone()];
    if let Some(rest) = raw.strip_prefix("00") {
        candidates.push(format!("+{rest}"));
    } else if let Some(rest) = raw.strip_prefix('0')
        && region.is_some()
    {
        candidates.push(rest.to_owned());
    }
    candidates.iter().find_map(|text| {
        let number = phonenumber::parse(region, text).ok()?;
        if !phonenumber::is_valid(&number) {
            return None;
        }
        number
            .format()
            .mode(phonenumber::Mode::E164)
            .to_string()
            .parse()
            .ok()
    })
}

/// A locale as help desks send it: a language tag in any case and with `-`
/// or `_` (`"en-US"`, `"en_US"`, `"pl"`, `"PL"`, `"pt-br"`), a POSIX locale
/// (`"pl_PL.UTF-8"`), or a language's English or native name (`"Polish"`,
/// `"English"`, `"Indonesian"`, `"Bahasa Indonesia"`, `"Tagalog"`,
/// `"Filipino"`, also `"English (United States)"`). Filipino (`fil`) reads
/// as Tagalog (`tl`) and the old code `in` as Indonesian (`id`), the tags
/// tidings ships templates for; other valid tags pass through as tags.
pub fn locale(raw: &str) -> Option<Locale> {
    let raw = raw.trim();
    if raw.len() > MAX_FIELD {
        return None;
    }
    // POSIX: language_TERRITORY.codeset@modifier.
    let tag = raw.split(['.', '@']).next().unwrap_or_default().trim();
    // "English (United States)": the language's name is enough.
    let name = raw.split('(').next().unwrap_or_default().trim();
    if let Some(code) = language_code(name) {
        return code.parse().ok();
    }
    let parsed: Locale = tag.parse().ok()?;
    let lang = parsed.language();
    let ours = match lang {
        "fil" => "tl",
        "in" => "id",
        _ => return Some(parsed),
    };
    format!("{ours}{}", &parsed.as_ref()[lang.len()..])
        .parse()
        .ok()
}

/// The ISO 639-1 code of a language named in English or in itself, for the
/// shipped locales and the languages help desks most often offer.
fn language_code(name: &str) -> Option<&'static str> {
    const NAMES: &[(&str, &str)] = &[
        ("english", "en"),
        ("polish", "pl"),
        ("polski", "pl"),
        ("indonesian", "id"),
        ("bahasa indonesia", "id"),
        ("tagalog", "tl"),
        ("filipino", "tl"),
        ("pilipino", "tl"),
        ("wikang filipino", "tl"),
        ("spanish", "es"),
        ("español", "es"),
        ("german", "de"),
        ("deutsch", "de"),
        ("french", "fr"),
        ("français", "fr"),
        ("portuguese", "pt"),
        ("português", "pt"),
        ("italian", "it"),
        ("italiano", "it"),
        ("dutch", "nl"),
        ("nederlands", "nl"),
        ("japanese", "ja"),
        ("chinese", "zh"),
        ("korean", "ko"),
        ("russian", "ru"),
        ("ukrainian", "uk"),
        ("czech", "cs"),
        ("swedish", "sv"),
        ("danish", "da"),
        ("norwegian", "no"),
        ("finnish", "fi"),
        ("turkish", "tr"),
        ("arabic", "ar"),
        ("hebrew", "he"),
        ("hindi", "hi"),
        ("thai", "th"),
        ("vietnamese", "vi"),
        ("malay", "ms"),
        ("bahasa melayu", "ms"),
    ];
    let lower = name.to_lowercase();
    NAMES
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|&(_, code)| code)
}

#[cfg(test)]
mod tests;
