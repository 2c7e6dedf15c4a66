//! Schedule maths at its edges: six-field cron, every way of writing
//! weekdays, quiet hours that end in a DST gap or fold, windows that cover
//! the whole day, cadences too long for the calendar.

use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::{Cadence, CronSpec, QuietHours, first_allowed_all, next_due, translate_weekdays};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("valid instant")
        .with_timezone(&Utc)
}

fn quiet(start: &str, end: &str) -> QuietHours {
    QuietHours::parse(start, end).expect("valid quiet hours")
}

#[test]
fn weekdays_are_read_in_every_unix_spelling() {
    // (field, the days it selects, or why not)
    #[rustfmt::skip]
    let rows: &[(&str, Result<&str, &str>)] = &[
        ("*", Ok("*")),
        ("?", Ok("?")),
        ("sun", Ok("Sun")),
        ("MON-wed", Ok("Mon,Tue,Wed")),
        ("Thursday", Ok("Thu")),
        ("1,3,5", Ok("Mon,Wed,Fri")),
        ("1/2", Ok("Mon,Wed,Fri")),
        ("0-7", Ok("Sun,Mon,Tue,Wed,Thu,Fri,Sat")),
        ("Mon-Fri/2", Ok("Mon,Wed,Fri")),
        ("6,0", Ok("Sun,Sat")),
        ("1/0", Err("bad step in `1/0`")),
        ("1/x", Err("bad step in `1/x`")),
        ("5-1", Err("weekday range `5-1` runs backwards")),
        ("Funday", Err("`Funday` is not a weekday (0-7 or Sun-Sat)")),
        ("Mo", Err("`Mo` is not a weekday (0-7 or Sun-Sat)")),
        ("8", Err("weekday 8 is out of range 0-7")),
        ("1-9", Err("weekday 9 is out of range 0-7")),
    ];
    for (field, want) in rows {
        let got = translate_weekdays(field);
        assert_eq!(
            got.as_deref(),
            want.map_err(str::to_owned).as_deref(),
            "{field}"
        );
    }
    let err = CronSpec::parse("0 9 * * 5-1").expect_err("backwards");
    assert_eq!(
        err,
        "cron `0 9 * * 5-1`: weekday range `5-1` runs backwards"
    );
    let err = CronSpec::parse("0 9 * * * * *").expect_err("seven fields");
    assert!(
        err.starts_with("cron `0 9 * * * * *` has 7 fields; write 5"),
        "{err}"
    );
}

#[test]
fn a_six_field_cron_has_seconds_and_keeps_its_source() {
    let c = CronSpec::parse("30 0 9 * * Mon").expect("valid");
    assert_eq!(c.source(), "30 0 9 * * Mon");
    assert_eq!(c, CronSpec::parse("30 0 9 * * Mon").expect("valid"));
    assert_ne!(c, CronSpec::parse("0 9 * * Mon").expect("valid"));
    // Friday 2027-01-15 → Monday 2027-01-18 09:00:30 in Warsaw (CET).
    let next = c.next_after(utc("2027-01-15T08:00:00Z"), Tz::Europe__Warsaw);
    assert_eq!(next, Some(utc("2027-01-18T08:00:30Z")));
}

#[test]
fn a_cron_that_never_fires_plans_nothing() {
    let c = CronSpec::parse("0 9 30 2 *").expect("parses");
    assert_eq!(c.next_after(utc("2027-01-15T08:00:00Z"), Tz::UTC), None);
    let cadence = Cadence::Cron(Box::new(c));
    assert_eq!(
        next_due(&cadence, &[], Tz::UTC, utc("2027-01-15T08:00:00Z")),
        None
    );
}

#[test]
fn quiet_hours_are_checked_when_read() {
    assert_eq!(
        QuietHours::parse("25:00", "08:00"),
        Err("`25:00` is not a time such as 21:00".to_owned())
    );
    assert_eq!(
        QuietHours::parse("21:00", "8am"),
        Err("`8am` is not a time such as 21:00".to_owned())
    );
    assert_eq!(
        QuietHours::parse("21:00", "21:00"),
        Err("quiet_hours start and end are equal".to_owned())
    );
    assert_eq!(
        QuietHours::parse(" 21:00 ", "08:00"),
        Ok(quiet("21:00", "08:00"))
    );
}

#[test]
fn quiet_hours_within_one_day_and_across_midnight() {
    let lunch = quiet("12:00", "13:00");
    let night = quiet("21:00", "08:00");
    // (window, instant, quiet, first allowed)
    #[rustfmt::skip]
    let rows = [
        (lunch, "2027-01-15T11:59:00Z", false, "2027-01-15T11:59:00Z"),
        (lunch, "2027-01-15T12:00:00Z", true, "2027-01-15T13:00:00Z"),
        (lunch, "2027-01-15T12:59:00Z", true, "2027-01-15T13:00:00Z"),
        (lunch, "2027-01-15T13:00:00Z", false, "2027-01-15T13:00:00Z"),
        (night, "2027-01-15T20:59:00Z", false, "2027-01-15T20:59:00Z"),
        (night, "2027-01-15T21:00:00Z", true, "2027-01-16T08:00:00Z"),
        (night, "2027-01-16T07:59:00Z", true, "2027-01-16T08:00:00Z"),
    ];
    for (q, at, is_quiet, allowed) in rows {
        assert_eq!(q.contains(utc(at), Tz::UTC), is_quiet, "{at}");
        assert_eq!(q.first_allowed(utc(at), Tz::UTC), utc(allowed), "{at}");
    }
}

#[test]
fn quiet_hours_that_end_in_a_dst_gap_or_fold_end_at_a_real_instant() {
    let ny = Tz::America__New_York;
    // 2026-03-08 02:30 does not exist in New York: the window ends at 03:00 EDT.
    let gap = quiet("00:00", "02:30");
    let at = utc("2026-03-08T06:00:00Z"); // 01:00 EST
    assert_eq!(gap.first_allowed(at, ny), utc("2026-03-08T07:00:00Z"));
    // 2026-11-01 01:30 happens twice: the window ends at the first.
    let fold = quiet("00:00", "01:30");
    let at = utc("2026-11-01T04:30:00Z"); // 00:30 EDT
    assert_eq!(fold.first_allowed(at, ny), utc("2026-11-01T05:30:00Z"));
}

#[test]
fn a_repeated_local_time_already_passed_fires_the_next_day() {
    let ny = Tz::America__New_York;
    let c = CronSpec::parse("30 1 * * *").expect("valid");
    // 01:15 EST, in the second pass through 01:00-02:00 on 2026-11-01:
    // 01:30 came already (EDT), so the next firing is the next night's.
    let next = c.next_after(utc("2026-11-01T06:15:00Z"), ny);
    assert_eq!(next, Some(utc("2026-11-02T06:30:00Z")));
}

/// Regression (this once failed): in the second pass through a repeated hour, a window that ends
/// inside it (01:00-01:30 in New York on 2026-11-01) maps its end to the
/// first 01:30 (EDT), which has passed; `first_allowed` then gives back
/// the instant itself, still inside quiet hours, instead of 01:30 EST.
/// Only windows ending in the repeated hour are hit (01:xx in the US,
/// 02:xx in the EU).
#[test]
fn quiet_hours_ending_in_a_repeated_hour_are_left_in_its_second_pass() {
    let ny = Tz::America__New_York;
    let q = quiet("01:00", "01:30");
    let at = utc("2026-11-01T06:10:00Z"); // 01:10 EST, quiet
    assert!(q.contains(at, ny));
    let allowed = q.first_allowed(at, ny);
    assert!(!q.contains(allowed, ny), "{allowed} is quiet");
    assert_eq!(allowed, utc("2026-11-01T06:30:00Z"));
}

#[test]
fn windows_are_left_one_after_another() {
    let tz = Tz::UTC;
    let at = utc("2027-01-15T21:30:00Z");
    assert_eq!(first_allowed_all(&[], at, tz), at);
    // 21:00-08:00, then 08:00-09:00: the first allowed instant is 09:00.
    let both = [quiet("21:00", "08:00"), quiet("08:00", "09:00")];
    assert_eq!(
        first_allowed_all(&both, at, tz),
        utc("2027-01-16T09:00:00Z")
    );
    // Windows that cover the whole day allow nothing: an instant comes back
    // all the same, and no loop hangs.
    let day = [quiet("00:00", "12:00"), quiet("12:00", "00:00")];
    let got = first_allowed_all(&day, at, tz);
    assert!(got >= at && (day[0].contains(got, tz) || day[1].contains(got, tz)));
}

#[test]
fn the_next_cron_update_waits_for_the_end_of_quiet_hours() {
    let c = CronSpec::parse("0 7 * * *").expect("valid");
    let cadence = Cadence::Cron(Box::new(c));
    let q = [quiet("21:00", "08:00")];
    // 07:00 in Warsaw is quiet: 08:00 CET, 07:00 UTC.
    let due = next_due(
        &cadence,
        &q,
        Tz::Europe__Warsaw,
        utc("2027-01-15T08:00:00Z"),
    );
    assert_eq!(due, Some(utc("2027-01-16T07:00:00Z")));
}

#[test]
fn an_interval_longer_than_time_itself_plans_nothing() {
    let never = Cadence::Every(Duration::MAX);
    assert_eq!(
        next_due(&never, &[], Tz::UTC, utc("2027-01-15T08:00:00Z")),
        None
    );
}

/// Regression (this once failed): an `every` that parses (humantime takes `300000y`) but lands past
/// the last date chrono represents makes `next_due` panic ("`DateTime +
/// TimeDelta` overflowed") instead of planning nothing, and with it every
/// planning call for a case under that rule.
#[test]
fn an_interval_past_the_last_date_plans_nothing_rather_than_panicking() {
    let every = crate::domain::parse_duration("every", "300000y").expect("humantime takes it");
    let far = Cadence::Every(every);
    assert_eq!(
        next_due(&far, &[], Tz::UTC, utc("2027-01-15T08:00:00Z")),
        None
    );
}
