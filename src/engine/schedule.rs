//! Schedule maths: Unix cron in the recipient's zone, quiet hours, cadence.
//!
//! Pure functions: the clock is passed in, nothing here reads the time or
//! does I/O. Local time appears only inside these functions; everything in
//! and out is UTC.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A Unix cron expression, translated for the `cron` crate.
#[derive(Debug, Clone)]
pub struct CronSpec {
    source: String,
    schedule: cron::Schedule,
}

impl PartialEq for CronSpec {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl CronSpec {
    /// Parses Unix cron: 5 fields (or 6 with leading seconds); weekdays 0–7
    /// with 0 and 7 = Sunday, or names. The `cron` crate numbers Sunday as 1,
    /// so numeric weekdays are rewritten as names before it sees them.
    pub fn parse(expr: &str) -> Result<Self, String> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        let (seconds, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(format!(
                    "cron `{expr}` has {n} fields; write 5 (minute hour day month weekday), e.g. \"0 9 * * 1-5\""
                ));
            }
        };
        let dow = translate_weekdays(rest[4]).map_err(|m| format!("cron `{expr}`: {m}"))?;
        let translated = format!(
            "{seconds} {} {} {} {} {dow}",
            rest[0], rest[1], rest[2], rest[3]
        );
        // The cron crate's error shows the translated expression with a
        // caret under it on lines of their own, which would only confuse;
        // its last line says what is wrong.
        let schedule = cron::Schedule::from_str(&translated).map_err(|e| {
            let text = e.to_string();
            let why = text
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("invalid expression");
            format!("cron `{expr}` is not valid: {why}")
        })?;
        Ok(Self {
            source: expr.to_owned(),
            schedule,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The first firing strictly after `after`, evaluated on the wall clock
    /// of `tz`. A local time skipped by a DST change fires at the first valid
    /// instant after the gap; a repeated local time fires once (the earlier).
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        // Evaluate the expression on naive local time (carried as UTC so the
        // crate applies no offset of its own), then map back through `tz`.
        let mut cursor = Utc.from_utc_datetime(&after.with_timezone(&tz).naive_local());
        for _ in 0..1000 {
            let local = self.schedule.after(&cursor).next()?;
            let instant = local_to_utc(local.naive_utc(), tz)?;
            if instant > after {
                return Some(instant);
            }
            cursor = local;
        }
        None
    }
}

/// Maps a local wall-clock time to an instant: the earlier of a repeated
/// time, the end of the gap for a skipped one.
pub fn local_to_utc(naive: NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, _) => Some(a.with_timezone(&Utc)),
        LocalResult::None => {
            // Walk forward minute by minute to the first valid local time;
            // DST gaps are at most a few hours.
            let mut probe = naive.with_second(0)?.with_nanosecond(0)?;
            for _ in 0..(24 * 60) {
                probe += chrono::Duration::minutes(1);
                match tz.from_local_datetime(&probe) {
                    LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                        return Some(t.with_timezone(&Utc));
                    }
                    LocalResult::None => {}
                }
            }
            None
        }
    }
}

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

fn weekday_number(token: &str) -> Result<usize, String> {
    if let Ok(n) = token.parse::<usize>() {
        return match n {
            0..=6 => Ok(n),
            7 => Ok(0),
            _ => Err(format!("weekday {n} is out of range 0-7")),
        };
    }
    let lower = token.to_ascii_lowercase();
    WEEKDAYS
        .iter()
        .position(|d| lower.starts_with(&d.to_ascii_lowercase()) && lower.len() >= 3)
        .ok_or_else(|| format!("`{token}` is not a weekday (0-7 or Sun-Sat)"))
}

/// Rewrites a Unix weekday field (numbers with 0/7 = Sunday, names, ranges,
/// lists, steps) as a list of names the `cron` crate reads unambiguously.
fn translate_weekdays(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_owned());
    }
    let mut days = [false; 7];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<usize>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("bad step in `{part}`"))?,
            ),
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" {
            (0, 6)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = weekday_number(a)?;
            // `5-7` means Friday to Sunday: keep 7 as the end of the week.
            let b = if b == "7" { 7 } else { weekday_number(b)? };
            if b < a {
                return Err(format!("weekday range `{range}` runs backwards"));
            }
            (a, b)
        } else {
            let d = weekday_number(range)?;
            (d, if step > 1 { 6 } else { d })
        };
        let mut d = lo;
        while d <= hi {
            days[d % 7] = true;
            d += step;
        }
    }
    let names: Vec<&str> = (0..7).filter(|d| days[*d]).map(|d| WEEKDAYS[d]).collect();
    if names.is_empty() {
        return Err("the weekday field selects no day".into());
    }
    Ok(names.join(","))
}

/// Local hours when no message goes out. `start` > `end` wraps midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

impl QuietHours {
    pub fn parse(start: &str, end: &str) -> Result<Self, String> {
        let p = |s: &str| {
            NaiveTime::parse_from_str(s.trim(), "%H:%M")
                .map_err(|_| format!("`{s}` is not a time such as 21:00"))
        };
        let q = Self {
            start: p(start)?,
            end: p(end)?,
        };
        if q.start == q.end {
            return Err("quiet_hours start and end are equal".into());
        }
        Ok(q)
    }

    fn contains_local(&self, t: NaiveTime) -> bool {
        if self.start < self.end {
            t >= self.start && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }

    /// Whether `instant` falls inside quiet hours in `tz`.
    pub fn contains(&self, instant: DateTime<Utc>, tz: Tz) -> bool {
        self.contains_local(instant.with_timezone(&tz).time())
    }

    /// `instant` itself when allowed, else the end of the quiet period it
    /// falls in (the first allowed instant).
    pub fn first_allowed(&self, instant: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        let mut t = instant;
        // A DST gap can move the end of one quiet period into the next one;
        // a couple of rounds settle it.
        for _ in 0..4 {
            let local = t.with_timezone(&tz);
            if !self.contains_local(local.time()) {
                return t;
            }
            let mut date = local.date_naive();
            if self.start > self.end && local.time() >= self.start {
                date = date.succ_opt().unwrap_or(date);
            }
            // The end of the window; in a repeated hour (clocks going back)
            // the later reading when the earlier one has passed.
            let end = match tz.from_local_datetime(&date.and_time(self.end)) {
                LocalResult::Ambiguous(a, b) => [a, b]
                    .into_iter()
                    .map(|e| e.with_timezone(&Utc))
                    .find(|e| *e > t),
                _ => local_to_utc(date.and_time(self.end), tz).filter(|e| *e > t),
            };
            match end {
                Some(end) => t = end,
                None => return t,
            }
        }
        t
    }
}

/// How often a rule sends progress updates.
#[derive(Debug, Clone, PartialEq)]
pub enum Cadence {
    /// A fixed interval since the last customer-facing message.
    Every(Duration),
    /// Wall-clock times in the recipient's zone.
    Cron(Box<CronSpec>),
}

/// When the next progress update is due, given the last customer-facing
/// contact and every quiet window that applies (the rule's and those of
/// the channels it will use); `None` when the cadence never fires again.
pub fn next_due(
    cadence: &Cadence,
    quiet: &[QuietHours],
    tz: Tz,
    last_contact: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let raw = match cadence {
        // An interval past the last date chrono can hold never fires.
        Cadence::Every(d) => {
            last_contact.checked_add_signed(chrono::Duration::from_std(*d).ok()?)?
        }
        Cadence::Cron(c) => c.next_after(last_contact, tz)?,
    };
    Some(first_allowed_all(quiet, raw, tz))
}

/// The first instant at or after `instant` outside every window in `quiet`
/// (windows that together cover the whole day leave none; the last
/// candidate is returned then).
pub fn first_allowed_all(quiet: &[QuietHours], instant: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    let mut t = instant;
    // Leaving one window may land in another; the windows are daily, so a
    // few rounds reach a fixed point.
    for _ in 0..=quiet.len() * 2 {
        let before = t;
        for q in quiet {
            t = q.first_allowed(t, tz);
        }
        if t == before {
            break;
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Weekday};
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("valid instant")
            .with_timezone(&Utc)
    }

    #[test]
    fn a_bad_cron_field_is_explained_on_one_line() {
        let err = CronSpec::parse("R 9 * * 1-5").expect_err("names in minutes");
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.starts_with("cron `R 9 * * 1-5` is not valid: The 'Minutes' field"),
            "{err}"
        );
    }

    #[test]
    fn unix_weekdays_mean_what_operators_think() {
        let c = CronSpec::parse("0 9 * * 1-5").expect("valid");
        let tz: Tz = "Europe/Warsaw".parse().expect("tz");
        // Friday 2026-11-27 10:00 local → next is Monday 09:00 local.
        let next = c
            .next_after(utc("2026-11-27T09:00:00Z"), tz)
            .expect("fires");
        let local = next.with_timezone(&tz);
        assert_eq!(local.weekday(), Weekday::Mon);
        assert_eq!(local.hour(), 9);
        for (field, expect) in [
            ("0", "Sun"),
            ("7", "Sun"),
            ("1-5", "Mon,Tue,Wed,Thu,Fri"),
            ("5-7", "Sun,Fri,Sat"),
            ("Mon-Fri", "Mon,Tue,Wed,Thu,Fri"),
            ("*/2", "Sun,Tue,Thu,Sat"),
        ] {
            assert_eq!(translate_weekdays(field).as_deref(), Ok(expect), "{field}");
        }
        assert!(CronSpec::parse("0 9 * *").is_err());
        assert!(CronSpec::parse("0 9 * * 8").is_err());
    }

    #[test]
    fn cron_skipped_local_time_fires_after_the_gap() {
        let tz: Tz = "America/New_York".parse().expect("tz");
        // 2026-03-08 02:30 does not exist in New York.
        let c = CronSpec::parse("30 2 * * *").expect("valid");
        let next = c
            .next_after(utc("2026-03-08T05:00:00Z"), tz)
            .expect("fires");
        assert_eq!(next, utc("2026-03-08T07:00:00Z")); // 03:00 EDT
    }

    #[test]
    fn cron_repeated_local_time_fires_once() {
        let tz: Tz = "America/New_York".parse().expect("tz");
        // 2026-11-01 01:30 happens twice in New York.
        let c = CronSpec::parse("30 1 * * *").expect("valid");
        let first = c
            .next_after(utc("2026-11-01T04:00:00Z"), tz)
            .expect("fires");
        assert_eq!(first, utc("2026-11-01T05:30:00Z")); // 01:30 EDT
        let second = c.next_after(first, tz).expect("fires");
        assert_eq!(second, utc("2026-11-02T06:30:00Z")); // next day, EST
    }

    #[test]
    fn quiet_hours_move_to_their_end() {
        let q = QuietHours::parse("21:00", "08:00").expect("valid");
        let tz: Tz = "Asia/Jakarta".parse().expect("tz");
        // 23:00 WIB → 08:00 WIB the next day.
        let t = q.first_allowed(utc("2026-11-25T16:00:00Z"), tz);
        assert_eq!(t, utc("2026-11-26T01:00:00Z"));
        // 03:00 WIB → 08:00 WIB the same day.
        let t = q.first_allowed(utc("2026-11-25T20:00:00Z"), tz);
        assert_eq!(t, utc("2026-11-26T01:00:00Z"));
        // 12:00 WIB stays.
        assert_eq!(
            q.first_allowed(utc("2026-11-25T05:00:00Z"), tz),
            utc("2026-11-25T05:00:00Z")
        );
    }

    fn zones() -> impl Strategy<Value = Tz> {
        prop::sample::select(vec![
            Tz::UTC,
            Tz::America__New_York,
            Tz::Europe__Warsaw,
            Tz::Asia__Jakarta,
            Tz::Asia__Manila,
            Tz::Australia__Lord_Howe,
            Tz::America__Santiago,
        ])
    }

    fn instants() -> impl Strategy<Value = DateTime<Utc>> {
        // 2024-01-01 .. 2028-01-01, so DST changes of several years are hit.
        (1_704_067_200i64..1_830_297_600i64)
            .prop_map(|s| DateTime::from_timestamp(s, 0).expect("in range"))
    }

    fn quiet() -> impl Strategy<Value = QuietHours> {
        (0u32..24, 0u32..24, prop::sample::select(vec![0u32, 30]))
            .prop_filter("distinct", |(a, b, _)| a != b)
            .prop_map(|(a, b, m)| QuietHours {
                start: NaiveTime::from_hms_opt(a, m, 0).expect("valid"),
                end: NaiveTime::from_hms_opt(b, 0, 0).expect("valid"),
            })
    }

    proptest! {
        /// Several windows (a rule's and its channels'): the result is the
        /// earliest instant outside all of them.
        #[test]
        fn first_allowed_all_leaves_every_window(
            tz in zones(), t in instants(), a in quiet(), b in quiet()
        ) {
            // Windows that together cover the whole day allow nothing.
            prop_assume!((0..1440u32).any(|m| {
                let time = NaiveTime::from_hms_opt(m / 60, m % 60, 0).expect("valid");
                !a.contains_local(time) && !b.contains_local(time)
            }));
            let got = first_allowed_all(&[a, b], t, tz);
            prop_assert!(got >= t);
            prop_assert!(!a.contains(got, tz) && !b.contains(got, tz), "{got} is quiet");
            // Nothing allowed in between, at minute steps.
            let mut probe = t;
            while probe < got {
                prop_assert!(a.contains(probe, tz) || b.contains(probe, tz), "{probe} was allowed");
                probe += chrono::Duration::minutes(1);
            }
        }

        #[test]
        fn every_is_never_early_nor_quiet(
            tz in zones(), last in instants(), secs in 1u64..(10 * 86_400), q in quiet()
        ) {
            let cadence = Cadence::Every(Duration::from_secs(secs));
            let due = next_due(&cadence, &[q], tz, last).expect("fires");
            prop_assert!(due >= last + chrono::Duration::seconds(secs as i64));
            prop_assert!(!q.contains(due, tz), "due {} in quiet hours", due.with_timezone(&tz));
        }

        #[test]
        fn cron_fires_after_now_on_its_hour(
            tz in zones(), now in instants(), hour in 0u32..24, minute in 0u32..60
        ) {
            let c = CronSpec::parse(&format!("{minute} {hour} * * *")).expect("valid");
            let next = c.next_after(now, tz).expect("fires");
            prop_assert!(next > now);
            prop_assert!(next - now <= chrono::Duration::hours(50));
            let local = next.with_timezone(&tz);
            // Either the exact wall-clock time, or the end of a DST gap
            // that swallowed it.
            let exact = local.hour() == hour && local.minute() == minute;
            let gap = tz.from_local_datetime(
                &local.date_naive().and_hms_opt(hour, minute, 0).expect("valid")
            ) == LocalResult::None;
            prop_assert!(exact || gap, "{local} for {hour}:{minute}");
        }

        #[test]
        fn cron_with_quiet_hours_is_after_now_and_allowed(
            tz in zones(), now in instants(), q in quiet(), hour in 0u32..24
        ) {
            let c = CronSpec::parse(&format!("0 {hour} * * Mon-Fri")).expect("valid");
            let due = next_due(&Cadence::Cron(Box::new(c)), &[q], tz, now).expect("fires");
            prop_assert!(due > now);
            prop_assert!(!q.contains(due, tz));
        }
    }
}

#[cfg(test)]
mod more_tests;
