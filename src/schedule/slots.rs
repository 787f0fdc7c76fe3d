//! When a schedule's slots fall: the three kinds of trigger, and which slots are due at a
//! given instant of the dispatcher's clock.
//!
//! A slot is identified by its time in Unix milliseconds. For cron and interval triggers a
//! slot falls due at its own time; a tumbling window's slot is the window's start and falls
//! due when the window ends, so a run reads a window that is over. Everything here is pure:
//! the clock is an argument, so the dispatcher decides and the state machine only records.
//!
//! Daylight saving time (cron in a zone that has it), as `croner` does it:
//! * a local time skipped by the clock going forward (02:30 on the night the clock jumps
//!   from 02:00 to 03:00): a fixed-time expression (`30 2 * * *`) fires once, at the first
//!   instant after the gap (03:00 local); an expression with a wildcard or step in its
//!   second, minute or hour field (`*/15 * * * *`) has no slots in the gap;
//! * a local hour repeated by the clock going back: a fixed-time expression fires once, at
//!   the first of the two instants; a wildcard or step expression fires on both passes (its
//!   slots are distinct instants, so each is still fired once).

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::{Deserialize, Serialize};

/// The shortest interval (`--every 1s`): the dispatcher looks for due slots a few times a
/// second, so a shorter one could not be kept.
pub const MIN_EVERY_MS: i64 = 1_000;

/// What makes a schedule's slots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    /// A cron expression (5 fields, or 6 with seconds first) read in an IANA time zone.
    Cron { expression: String, time_zone: String },
    /// Every `every_ms`, at `anchor_ms + k * every_ms` (the anchor is `--start`, or the Unix
    /// epoch, so `--every 1h` fires on the hour).
    Every { every_ms: i64, anchor_ms: i64 },
    /// Consecutive `[start, start + every)` windows from `start_ms`; at most
    /// `max_concurrent` of their runs go at once.
    Window {
        every_ms: i64,
        start_ms: i64,
        max_concurrent: u32,
    },
}

/// Names of a cron expression's fields, by how many fields it has.
fn cron_fields(count: usize) -> &'static [&'static str] {
    match count {
        6 => &["second", "minute", "hour", "day of month", "month", "day of week"],
        7 => &[
            "second",
            "minute",
            "hour",
            "day of month",
            "month",
            "day of week",
            "year",
        ],
        _ => &["minute", "hour", "day of month", "month", "day of week"],
    }
}

/// Parses a cron expression; a refusal names the field at fault where one is.
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    let whole = Cron::from_str(expression);
    let why = match whole {
        Ok(cron) => return Ok(cron),
        Err(e) => e.to_string(),
    };
    let fields: Vec<&str> = expression.split_whitespace().collect();
    if !(5..=7).contains(&fields.len()) {
        return Err(format!(
            "invalid cron expression '{expression}': it has {} fields; give 5 (minute hour day-of-month month day-of-week) or 6 with seconds first",
            fields.len()
        ));
    }
    // croner's message does not say which field it choked on: try each field alone among
    // wildcards, and name the first that fails by itself.
    for (i, field) in fields.iter().enumerate() {
        let probe: Vec<&str> = (0..fields.len()).map(|j| if i == j { *field } else { "*" }).collect();
        if Cron::from_str(&probe.join(" ")).is_err() {
            return Err(format!(
                "invalid cron expression '{expression}': the {} field '{field}' is not valid ({why})",
                cron_fields(fields.len())[i]
            ));
        }
    }
    Err(format!("invalid cron expression '{expression}': {why}"))
}

/// Parses an IANA time zone name (`Europe/Berlin`, `UTC`).
pub fn parse_zone(name: &str) -> Result<Tz, String> {
    Tz::from_str(name).map_err(|_| {
        format!(
            "invalid time zone '{name}': give an IANA time zone name such as Europe/Berlin, America/New_York or UTC"
        )
    })
}

/// Parses `--every`: a whole number of seconds, minutes, hours or days (`30s`, `5m`, `1h`, `1d`).
pub fn parse_every(text: &str) -> Result<i64, String> {
    let bad = || format!("invalid interval '{text}': give a whole number and a unit, e.g. 1s, 30s, 5m, 1h or 1d");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n.checked_mul(unit_ms).ok_or_else(bad)?;
    if ms < MIN_EVERY_MS {
        return Err(format!("invalid interval '{text}': the shortest is 1s"));
    }
    Ok(ms)
}

/// Parses `--start` (RFC 3339, e.g. `2026-11-01T00:00:00Z`) into Unix milliseconds.
pub fn parse_start(text: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("invalid --start '{text}': {e}; give an RFC 3339 time such as 2026-11-01T00:00:00Z"))
}

/// The latest `anchor + k * every` at or before `t`; `None` where that leaves i64 (a
/// record that no proposer makes, but the dispatcher must not panic on).
fn step_at_or_before(anchor: i64, every: i64, t: i64) -> Option<i64> {
    if every <= 0 {
        return None;
    }
    let k = t.checked_sub(anchor)?.div_euclid(every);
    anchor.checked_add(k.checked_mul(every)?)
}

fn utc(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

impl Trigger {
    /// Checks what `Trigger` cannot say by its type (a cron expression, a zone, an interval).
    pub fn check(&self) -> Result<(), String> {
        match self {
            Trigger::Cron { expression, time_zone } => {
                parse_cron(expression)?;
                parse_zone(time_zone)?;
            }
            Trigger::Every { every_ms, .. } | Trigger::Window { every_ms, .. } if *every_ms < MIN_EVERY_MS => {
                return Err("the shortest interval is 1s".into());
            }
            Trigger::Window { max_concurrent: 0, .. } => {
                return Err("--max-concurrent-windows must be at least 1".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// The zone placeholders are rendered in: the cron's, else UTC.
    pub fn zone(&self) -> Tz {
        match self {
            Trigger::Cron { time_zone, .. } => parse_zone(time_zone).unwrap_or(Tz::UTC),
            _ => Tz::UTC,
        }
    }

    pub fn is_window(&self) -> bool {
        matches!(self, Trigger::Window { .. })
    }

    /// When `slot` falls due: its own time, or for a window its end.
    pub fn due_at(&self, slot: i64) -> i64 {
        match self {
            Trigger::Window { every_ms, .. } => slot.saturating_add(*every_ms),
            _ => slot,
        }
    }

    /// The first slot at or after `from_ms`.
    pub fn first_at_or_after(&self, from_ms: i64) -> Option<i64> {
        match self {
            Trigger::Cron { .. } => {
                // Cron works in whole seconds: a search from inside a second would find that
                // second itself, before `from_ms`.
                let (cron, zone) = self.cron()?;
                let from = utc(from_ms.checked_add(999)?.div_euclid(1000).saturating_mul(1000)).with_timezone(&zone);
                cron.find_next_occurrence(&from, true)
                    .ok()
                    .map(|t| t.timestamp_millis())
            }
            Trigger::Every { every_ms, anchor_ms }
            | Trigger::Window {
                every_ms,
                start_ms: anchor_ms,
                ..
            } => {
                let at = step_at_or_before(*anchor_ms, *every_ms, from_ms)?;
                let at = if at < from_ms { at.checked_add(*every_ms)? } else { at };
                // Windows start at `--start`: none before it.
                Some(if self.is_window() { at.max(*anchor_ms) } else { at })
            }
        }
    }

    /// The slot after `slot`.
    pub fn next(&self, slot: i64) -> Option<i64> {
        self.first_at_or_after(slot.checked_add(1)?)
    }

    /// The latest slot at or before `until_ms`, if it is at or after `floor_ms`.
    fn last_at_or_before(&self, until_ms: i64, floor_ms: i64) -> Option<i64> {
        let slot = match self {
            Trigger::Cron { .. } => {
                let (cron, zone) = self.cron()?;
                let until = utc(until_ms.div_euclid(1000).saturating_mul(1000)).with_timezone(&zone);
                cron.find_previous_occurrence(&until, true).ok()?.timestamp_millis()
            }
            Trigger::Every { every_ms, anchor_ms }
            | Trigger::Window {
                every_ms,
                start_ms: anchor_ms,
                ..
            } => step_at_or_before(*anchor_ms, *every_ms, until_ms)?,
        };
        (slot >= floor_ms).then_some(slot)
    }

    fn cron(&self) -> Option<(Cron, Tz)> {
        match self {
            Trigger::Cron { expression, time_zone } => {
                Some((parse_cron(expression).ok()?, parse_zone(time_zone).ok()?))
            }
            _ => None,
        }
    }

    /// Up to `count` of the newest slots that are due at `now_ms` and not yet recorded (later
    /// than `last`, and at or after `earliest`), oldest first; and whether older unrecorded due
    /// slots remain beyond them. Walks back from now, so a schedule that missed a year of
    /// one-second slots costs `count` steps, not the year.
    pub fn newest_due(&self, last: Option<i64>, earliest: i64, now_ms: i64, count: usize) -> (Vec<i64>, bool) {
        let floor = last.map_or(earliest, |l| l.saturating_add(1).max(earliest));
        // The latest slot whose due time has come.
        let until = match self {
            Trigger::Window { every_ms, .. } => now_ms.saturating_sub(*every_ms),
            _ => now_ms,
        };
        let mut found = Vec::new();
        let mut cursor = until;
        while let Some(slot) = self.last_at_or_before(cursor, floor) {
            if found.len() == count {
                return (found.into_iter().rev().collect(), true);
            }
            found.push(slot);
            let Some(before) = slot.checked_sub(1) else { break };
            cursor = before;
        }
        (found.into_iter().rev().collect(), false)
    }

    /// Up to `count` of the oldest due, unrecorded slots, oldest first (windows are backfilled
    /// in order).
    pub fn oldest_due(&self, last: Option<i64>, earliest: i64, now_ms: i64, count: usize) -> Vec<i64> {
        let mut slot = match last {
            Some(l) => self.next(l),
            None => self.first_at_or_after(earliest),
        };
        let mut found = Vec::new();
        while let Some(s) = slot {
            if found.len() == count || self.due_at(s) > now_ms {
                break;
            }
            found.push(s);
            slot = self.next(s);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        parse_start(rfc3339).unwrap()
    }

    fn cron(expression: &str, zone: &str) -> Trigger {
        Trigger::Cron {
            expression: expression.into(),
            time_zone: zone.into(),
        }
    }

    /// Every slot in `[from, to]`, walking forwards.
    fn slots(t: &Trigger, from: &str, to: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut s = t.first_at_or_after(ms(from));
        while let Some(slot) = s.filter(|s| *s <= ms(to)) {
            out.push(utc(slot).to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            s = t.next(slot);
        }
        out
    }

    #[test]
    fn a_bad_cron_field_is_named() {
        let e = parse_cron("61 * * * *").unwrap_err();
        assert!(e.contains("minute field '61'"), "{e}");
        let e = parse_cron("0 25 * * *").unwrap_err();
        assert!(e.contains("hour field '25'"), "{e}");
        let e = parse_cron("0 0 * 13 *").unwrap_err();
        assert!(e.contains("month field '13'"), "{e}");
        let e = parse_cron("0 0 *").unwrap_err();
        assert!(e.contains("3 fields"), "{e}");
        assert!(parse_cron("30 2 * * *").is_ok());
        assert!(parse_cron("*/2 * * * * *").is_ok(), "six fields: seconds first");
    }

    #[test]
    fn zones_and_intervals_are_checked() {
        assert!(parse_zone("Europe/Berlin").is_ok());
        assert!(
            parse_zone("Europe/Berln")
                .unwrap_err()
                .contains("invalid time zone 'Europe/Berln'")
        );
        assert_eq!(parse_every("30s"), Ok(30_000));
        assert_eq!(parse_every("5m"), Ok(300_000));
        assert_eq!(parse_every("1h"), Ok(3_600_000));
        assert!(parse_every("0s").unwrap_err().contains("shortest is 1s"));
        assert!(parse_every("5x").is_err());
        assert!(parse_every("m").is_err());
        assert!(parse_every("").is_err());
    }

    #[test]
    fn intervals_fall_on_multiples_of_the_anchor() {
        let hourly = Trigger::Every {
            every_ms: 3_600_000,
            anchor_ms: 0,
        };
        assert_eq!(
            slots(&hourly, "2026-11-01T00:30:00Z", "2026-11-01T02:00:00Z"),
            ["2026-11-01T01:00:00Z", "2026-11-01T02:00:00Z"]
        );
        let anchored = Trigger::Every {
            every_ms: 3_600_000,
            anchor_ms: ms("2026-11-01T00:15:00Z"),
        };
        assert_eq!(
            slots(&anchored, "2026-11-01T00:30:00Z", "2026-11-01T02:00:00Z"),
            ["2026-11-01T01:15:00Z"]
        );
    }

    #[test]
    fn due_slots_newest_and_oldest() {
        let t = Trigger::Every {
            every_ms: 1_000,
            anchor_ms: 0,
        };
        // Nothing recorded, earliest 10 s, now 14.5 s: slots 10..=14 are due.
        assert_eq!(t.newest_due(None, 10_000, 14_500, 2), (vec![13_000, 14_000], true));
        assert_eq!(
            t.newest_due(None, 10_000, 14_500, 10),
            (vec![10_000, 11_000, 12_000, 13_000, 14_000], false)
        );
        // Slot 13 recorded: only 14 is left.
        assert_eq!(t.newest_due(Some(13_000), 10_000, 14_500, 10), (vec![14_000], false));
        assert_eq!(t.newest_due(Some(14_000), 10_000, 14_500, 10), (vec![], false));
        // A slot exactly at now is due.
        assert_eq!(t.newest_due(Some(13_000), 0, 14_000, 10), (vec![14_000], false));
    }

    #[test]
    fn windows_fall_due_when_they_end_and_are_backfilled_in_order() {
        let t = Trigger::Window {
            every_ms: 3_600_000,
            start_ms: ms("2026-11-01T00:00:00Z"),
            max_concurrent: 2,
        };
        let now = ms("2026-11-01T03:30:00Z");
        let due = t.oldest_due(None, ms("2026-11-01T00:00:00Z"), now, 10);
        assert_eq!(
            due,
            [
                ms("2026-11-01T00:00:00Z"),
                ms("2026-11-01T01:00:00Z"),
                ms("2026-11-01T02:00:00Z")
            ],
            "the 03:00 window is not over at 03:30"
        );
        assert_eq!(t.oldest_due(Some(due[0]), 0, now, 1), [due[1]]);
        assert_eq!(t.due_at(due[2]), ms("2026-11-01T03:00:00Z"));
        // Windows start at --start, even when asked from earlier.
        assert_eq!(t.first_at_or_after(0), Some(ms("2026-11-01T00:00:00Z")));
    }

    #[test]
    fn cron_in_a_zone() {
        // 02:30 in Berlin is 01:30 UTC in winter.
        let t = cron("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            slots(&t, "2026-11-01T00:00:00Z", "2026-11-02T23:59:59Z"),
            ["2026-11-01T01:30:00Z", "2026-11-02T01:30:00Z"]
        );
        let (due, older) = t.newest_due(None, ms("2026-10-30T00:00:00Z"), ms("2026-11-02T12:00:00Z"), 2);
        assert_eq!(due, [ms("2026-11-01T01:30:00Z"), ms("2026-11-02T01:30:00Z")]);
        assert!(older, "the 31 October slot is older");
    }

    /// The DST behaviour the README documents (croner's): Berlin skips 02:00–03:00 local on
    /// 29 March 2026 and repeats 02:00–03:00 local on 25 October 2026.
    #[test]
    fn daylight_saving_changes() {
        // Skipped hour, fixed time: once, at the first instant after the gap (03:00 CEST = 01:00 UTC).
        let nightly = cron("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            slots(&nightly, "2026-03-28T12:00:00Z", "2026-03-30T12:00:00Z"),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
        );
        // Skipped hour, wildcard hour: no slots in the gap (01:xx local, then 03:xx).
        let quarter = cron("*/30 * * * *", "Europe/Berlin");
        assert_eq!(
            slots(&quarter, "2026-03-29T00:00:00Z", "2026-03-29T01:30:00Z"),
            [
                "2026-03-29T00:00:00Z",
                "2026-03-29T00:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-29T01:30:00Z"
            ],
            "01:00 and 01:30 CET, then 03:00 and 03:30 CEST: 02:00 and 02:30 do not exist"
        );
        // Repeated hour, fixed time: once, at the first pass (02:30 CEST = 00:30 UTC).
        assert_eq!(
            slots(&nightly, "2026-10-24T12:00:00Z", "2026-10-25T12:00:00Z"),
            ["2026-10-25T00:30:00Z"]
        );
        // Repeated hour, wildcard: on both passes, distinct instants.
        assert_eq!(
            slots(&quarter, "2026-10-25T00:00:00Z", "2026-10-25T01:30:00Z"),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:30:00Z"
            ],
            "02:00 and 02:30 CEST, then 02:00 and 02:30 CET"
        );
        // Walking back over the repeated hour finds the same slots.
        let (back, _) = quarter.newest_due(None, ms("2026-10-25T00:00:00Z"), ms("2026-10-25T01:30:00Z"), 10);
        assert_eq!(back.len(), 4);
        let (back, _) = nightly.newest_due(None, ms("2026-10-24T12:00:00Z"), ms("2026-10-25T12:00:00Z"), 10);
        assert_eq!(back, [ms("2026-10-25T00:30:00Z")]);
    }
}
