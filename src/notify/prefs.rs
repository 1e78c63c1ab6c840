//! What a user's preferences make of a notification: pushed (webhook) or silent (feed and
//! counts only). Pure: the time is passed in, the time zone database is jiff's (the system's
//! zoneinfo, the bundled copy where there is none), so the DST edges are tested with plain values.

use crate::proto::{NotifyPrefs, Priority, QuietHours, RoomName};

/// Most types in `skip_types`, and their length.
pub const MAX_SKIP_TYPES: usize = 32;
pub const MAX_TYPE_BYTES: usize = 64;

/// Why a notification is only kept in the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silenced {
    Muted,
    QuietHours,
    BelowMinPriority,
    SkippedType,
}

/// Checks preferences a client sets; the error is the `bad_prefs` message.
pub fn check(prefs: &NotifyPrefs, max_mutes: usize) -> Result<(), String> {
    if prefs.mutes.len() > max_mutes {
        return Err(format!("at most {max_mutes} muted rooms"));
    }
    for mute in &prefs.mutes {
        RoomName::parse(&mute.room).map_err(|_| format!("mute: invalid room name {:?}", mute.room))?;
    }
    if prefs.skip_types.len() > MAX_SKIP_TYPES
        || prefs.skip_types.iter().any(|t| t.is_empty() || t.len() > MAX_TYPE_BYTES)
    {
        return Err(format!("skip_types: at most {MAX_SKIP_TYPES} types of 1-{MAX_TYPE_BYTES} bytes"));
    }
    if let Some(quiet) = &prefs.quiet_hours {
        let (start, end) = (minute_of_day(&quiet.start)?, minute_of_day(&quiet.end)?);
        if start == end {
            return Err("quiet_hours: start and end are the same time".into());
        }
        jiff::tz::TimeZone::get(&quiet.tz).map_err(|_| format!("quiet_hours: unknown time zone {:?}", quiet.tz))?;
    }
    Ok(())
}

/// `HH:MM` (24 h) as minutes after midnight.
fn minute_of_day(text: &str) -> Result<u32, String> {
    let bad = || format!("quiet_hours: {text:?} is not HH:MM (00:00-23:59)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// Whether `now_ms` falls in the quiet hours, read on the user's wall clock. Unusable
/// preferences (never stored: `check` refuses them) count as not quiet.
pub fn is_quiet(quiet: &QuietHours, now_ms: u64) -> bool {
    let (Ok(start), Ok(end)) = (minute_of_day(&quiet.start), minute_of_day(&quiet.end)) else { return false };
    let Ok(tz) = jiff::tz::TimeZone::get(&quiet.tz) else { return false };
    let Ok(now) = jiff::Timestamp::from_millisecond(i64::try_from(now_ms).unwrap_or(i64::MAX)) else {
        return false;
    };
    let local = now.to_zoned_datetime(tz);
    let minute = local.hour() as u32 * 60 + local.minute() as u32;
    if start < end { (start..end).contains(&minute) } else { minute >= start || minute < end }
}

/// Whether a notification is pushed, or why not.
pub fn decide(
    prefs: &NotifyPrefs,
    room: Option<&str>,
    kind: &str,
    priority: Priority,
    now_ms: u64,
) -> Result<(), Silenced> {
    if let Some(room) = room
        && prefs.mutes.iter().any(|m| m.room == room && m.until.is_none_or(|until| now_ms < until))
    {
        return Err(Silenced::Muted);
    }
    if prefs.skip_types.iter().any(|t| t == kind) {
        return Err(Silenced::SkippedType);
    }
    if priority < prefs.min_priority {
        return Err(Silenced::BelowMinPriority);
    }
    if priority < Priority::Urgent && prefs.quiet_hours.as_ref().is_some_and(|q| is_quiet(q, now_ms)) {
        return Err(Silenced::QuietHours);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Mute;

    /// Unix ms of an RFC 3339 instant.
    fn at(instant: &str) -> u64 {
        instant.parse::<jiff::Timestamp>().unwrap().as_millisecond() as u64
    }

    fn quiet(start: &str, end: &str, tz: &str) -> QuietHours {
        QuietHours { start: start.into(), end: end.into(), tz: tz.into() }
    }

    #[test]
    fn quiet_hours_span_midnight_on_the_users_wall_clock() {
        let q = quiet("22:00", "07:00", "Europe/Berlin");
        // Winter: Berlin is UTC+1.
        assert!(!is_quiet(&q, at("2026-01-10T20:59:00Z")));
        assert!(is_quiet(&q, at("2026-01-10T21:00:00Z")));
        assert!(is_quiet(&q, at("2026-01-11T05:59:00Z")));
        assert!(!is_quiet(&q, at("2026-01-11T06:00:00Z")));
        // Summer: UTC+2, the same wall-clock hours are an hour earlier in UTC.
        assert!(is_quiet(&q, at("2026-07-10T20:00:00Z")));
        assert!(!is_quiet(&q, at("2026-07-11T05:00:00Z")));
        // A window within one day.
        let lunch = quiet("12:00", "13:30", "America/New_York");
        assert!(is_quiet(&lunch, at("2026-01-10T17:29:00Z")));
        assert!(!is_quiet(&lunch, at("2026-01-10T18:30:00Z")));
    }

    #[test]
    fn quiet_hours_follow_dst_changes() {
        // Berlin springs forward on 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00Z).
        let q = quiet("22:00", "07:00", "Europe/Berlin");
        assert!(is_quiet(&q, at("2026-03-29T00:59:59Z")), "01:59:59 CET");
        assert!(is_quiet(&q, at("2026-03-29T01:00:00Z")), "03:00 CEST");
        assert!(is_quiet(&q, at("2026-03-29T04:59:00Z")), "06:59 CEST");
        assert!(!is_quiet(&q, at("2026-03-29T05:00:00Z")), "07:00 CEST, an hour earlier in UTC than the day before");
        assert!(is_quiet(&q, at("2026-03-28T05:59:00Z")), "06:59 CET the day before");
        // Quiet hours that start in the skipped hour begin at 03:00 CEST.
        let skipped = quiet("02:30", "04:00", "Europe/Berlin");
        assert!(!is_quiet(&skipped, at("2026-03-29T00:59:00Z")), "01:59 CET");
        assert!(is_quiet(&skipped, at("2026-03-29T01:00:00Z")), "03:00 CEST");
        // Fall back on 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00Z); 02:15 happens twice
        // and both are quiet.
        let repeated = quiet("02:00", "02:30", "Europe/Berlin");
        assert!(is_quiet(&repeated, at("2026-10-25T00:15:00Z")), "02:15 CEST");
        assert!(is_quiet(&repeated, at("2026-10-25T01:15:00Z")), "02:15 CET");
        assert!(!is_quiet(&repeated, at("2026-10-25T01:45:00Z")), "02:45 CET");
        // New York springs forward on 2026-03-08 at 02:00 EST (07:00Z).
        let ny = quiet("23:00", "06:00", "America/New_York");
        assert!(is_quiet(&ny, at("2026-03-08T09:59:00Z")), "05:59 EDT");
        assert!(!is_quiet(&ny, at("2026-03-08T10:00:00Z")), "06:00 EDT");
    }

    #[test]
    fn mutes_types_and_priorities_silence_and_urgent_breaks_quiet_hours() {
        let now = at("2026-01-10T23:00:00Z");
        let prefs = NotifyPrefs {
            mutes: vec![
                Mute { room: "chat:muted".into(), until: None },
                Mute { room: "chat:snoozed".into(), until: Some(now + 1) },
                Mute { room: "chat:was".into(), until: Some(now) },
            ],
            quiet_hours: None,
            min_priority: Priority::Normal,
            skip_types: vec!["digest".into()],
        };
        let d = |room, kind, priority| decide(&prefs, room, kind, priority, now);
        assert_eq!(d(Some("chat:muted"), "mention", Priority::Urgent), Err(Silenced::Muted));
        assert_eq!(d(Some("chat:snoozed"), "mention", Priority::Normal), Err(Silenced::Muted));
        assert_eq!(d(Some("chat:was"), "mention", Priority::Normal), Ok(()), "the mute ended");
        assert_eq!(d(None, "digest", Priority::High), Err(Silenced::SkippedType));
        assert_eq!(d(None, "mention", Priority::Low), Err(Silenced::BelowMinPriority));
        assert_eq!(d(None, "mention", Priority::Normal), Ok(()));
        let night = NotifyPrefs { quiet_hours: Some(quiet("22:00", "07:00", "Europe/Berlin")), ..prefs };
        assert_eq!(decide(&night, None, "mention", Priority::High, now), Err(Silenced::QuietHours));
        assert_eq!(decide(&night, None, "mention", Priority::Urgent, now), Ok(()));
    }

    #[test]
    fn bad_preferences_are_refused() {
        let with_quiet = |q| NotifyPrefs { quiet_hours: Some(q), ..NotifyPrefs::default() };
        assert!(check(&with_quiet(quiet("22:00", "07:00", "Europe/Berlin")), 10).is_ok());
        assert!(check(&with_quiet(quiet("22:00", "07:00", "Mars/Olympus")), 10).unwrap_err().contains("time zone"));
        assert!(check(&with_quiet(quiet("24:00", "07:00", "UTC")), 10).unwrap_err().contains("HH:MM"));
        assert!(check(&with_quiet(quiet("7:00", "08:00", "UTC")), 10).is_err());
        assert!(check(&with_quiet(quiet("07:00", "07:00", "UTC")), 10).is_err());
        let mutes = NotifyPrefs {
            mutes: vec![Mute { room: "a".into(), until: None }, Mute { room: "b".into(), until: None }],
            ..NotifyPrefs::default()
        };
        assert!(check(&mutes, 1).is_err());
        let bad_room = NotifyPrefs { mutes: vec![Mute { room: "no space".into(), until: None }], ..mutes };
        assert!(check(&bad_room, 10).unwrap_err().contains("room"));
    }
}
