//! The placeholders of a schedule's job template: `{slot}`, `{date}`, and for tumbling
//! windows `{window_start}` and `{window_end}`, each with an optional strftime format
//! (`{slot:%Y%m%dT%H%M%S}`), substituted into each run's source, sink and name.
//!
//! A placeholder is `{` + a lowercase name + optional `:FORMAT` + `}`; any other brace is
//! text (a JSON literal in a query stays as it is), and `{{`/`}}` write a brace that would
//! otherwise open a placeholder. A name the schedule does not define is refused when the
//! schedule is created, so a typo (`{windw_start}`) never reaches a run.
//!
//! In a PostgreSQL query a value is substituted as a quoted SQL literal, never as raw text:
//! `'2026-11-01T00:00:00Z'::timestamptz` for a time, `'2026-11-01'::date` for `{date}`, and a
//! plain string literal (quotes doubled) for a formatted value. A placeholder written inside
//! quotes in the query would end up quoted twice, so it is refused.

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;

/// The placeholders every schedule has, and those only windows have.
const ALWAYS: [&str; 2] = ["slot", "date"];
const WINDOW: [&str; 2] = ["window_start", "window_end"];

/// How substituted values are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// As text: paths, table names, job names.
    Text,
    /// As SQL literals: a PostgreSQL query.
    Sql,
}

/// The times of one run.
#[derive(Clone, Copy, Debug)]
pub struct Values {
    pub slot_ms: i64,
    /// `[start, end)` of a window schedule's run.
    pub window: Option<(i64, i64)>,
    /// Where `{date}` and formatted times are read.
    pub zone: Tz,
}

#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(String),
    Placeholder { name: &'a str, format: Option<&'a str> },
}

/// Splits `template` into text and placeholders.
fn pieces(template: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if rest.starts_with("{{") || rest.starts_with("}}") {
            text.push(c);
            rest = &rest[2..];
            continue;
        }
        if c == '{'
            && let Some((name, format, len)) = placeholder_at(rest)
        {
            if !text.is_empty() {
                out.push(Piece::Text(std::mem::take(&mut text)));
            }
            out.push(Piece::Placeholder { name, format });
            rest = &rest[len..];
            continue;
        }
        text.push(c);
        rest = &rest[c.len_utf8()..];
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    out
}

/// A placeholder at the start of `s` (which begins with `{`): its name, format and length.
fn placeholder_at(s: &str) -> Option<(&str, Option<&str>, usize)> {
    let body = &s[1..];
    let name_len = body
        .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
        .unwrap_or(body.len());
    if name_len == 0 {
        return None;
    }
    let name = &body[..name_len];
    match body[name_len..].chars().next()? {
        '}' => Some((name, None, name_len + 2)),
        ':' => {
            let after = &body[name_len + 1..];
            let end = after.find('}')?;
            Some((name, Some(&after[..end]), name_len + 2 + end + 1))
        }
        _ => None,
    }
}

/// The placeholders a schedule defines.
pub fn defined(window: bool) -> Vec<&'static str> {
    let mut names = ALWAYS.to_vec();
    if window {
        names.extend(WINDOW);
    }
    names
}

/// Checks a template: every placeholder defined, every format valid, none inside quotes of a
/// query. `what` names the flag in the refusal (`--source`).
pub fn check(template: &str, window: bool, mode: Mode, what: &str) -> Result<(), String> {
    let names = defined(window);
    let mut quote: Option<char> = None;
    for piece in pieces(template) {
        match piece {
            Piece::Text(text) => {
                for c in text.chars() {
                    quote = match (quote, c) {
                        (None, '\'' | '"') => Some(c),
                        (Some(q), c) if q == c => None,
                        (q, _) => q,
                    };
                }
            }
            Piece::Placeholder { name, format } => {
                let shown = match format {
                    Some(f) => format!("{{{name}:{f}}}"),
                    None => format!("{{{name}}}"),
                };
                if !names.contains(&name) {
                    let offered: Vec<String> = names.iter().map(|n| format!("{{{n}}}")).collect();
                    return Err(format!(
                        "{what}: unknown placeholder {shown}; this schedule offers {}",
                        offered.join(", ")
                    ));
                }
                if let Some(f) = format
                    && (f.is_empty() || StrftimeItems::new(f).any(|i| i == Item::Error))
                {
                    return Err(format!("{what}: {shown} has an invalid strftime format '{f}'"));
                }
                if mode == Mode::Sql && quote.is_some() {
                    return Err(format!(
                        "{what}: {shown} is inside quotes in the query; write it bare: it is substituted as a quoted SQL literal"
                    ));
                }
            }
        }
    }
    Ok(())
}

fn at(ms: i64, zone: Tz) -> DateTime<Tz> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .with_timezone(&zone)
}

/// A string as an SQL literal: in single quotes, quotes inside doubled.
pub fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `template` with its placeholders replaced by `values`. Run after [`check`], so an
/// unknown name (impossible then) is left as written.
pub fn render(template: &str, values: &Values, mode: Mode) -> String {
    let mut out = String::new();
    for piece in pieces(template) {
        let (name, format) = match piece {
            Piece::Text(text) => {
                out.push_str(&text);
                continue;
            }
            Piece::Placeholder { name, format } => (name, format),
        };
        let time = match (name, values.window) {
            ("slot" | "date", _) => values.slot_ms,
            ("window_start", Some((start, _))) => start,
            ("window_end", Some((_, end))) => end,
            _ => {
                out.push('{');
                out.push_str(name);
                out.push('}');
                continue;
            }
        };
        let t = at(time, values.zone);
        let (text, cast) = match (format, name) {
            (Some(f), _) => (t.format(f).to_string(), None),
            (None, "date") => (t.format("%Y-%m-%d").to_string(), Some("date")),
            (None, _) => (t.to_rfc3339_opts(SecondsFormat::AutoSi, true), Some("timestamptz")),
        };
        match (mode, cast) {
            (Mode::Text, _) => out.push_str(&text),
            (Mode::Sql, Some(cast)) => out.push_str(&format!("{}::{cast}", sql_literal(&text))),
            (Mode::Sql, None) => out.push_str(&sql_literal(&text)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t: &str) -> i64 {
        DateTime::parse_from_rfc3339(t).unwrap().timestamp_millis()
    }

    fn window_values() -> Values {
        Values {
            slot_ms: ms("2026-11-01T00:00:00Z"),
            window: Some((ms("2026-11-01T00:00:00Z"), ms("2026-11-01T01:00:00Z"))),
            zone: Tz::UTC,
        }
    }

    #[test]
    fn text_substitution_with_and_without_formats() {
        let v = window_values();
        assert_eq!(
            render("/events/{window_start:%Y/%m/%d/%H}.parquet", &v, Mode::Text),
            "/events/2026/11/01/00.parquet"
        );
        assert_eq!(
            render("/orders/{date}/o.csv", &v, Mode::Text),
            "/orders/2026-11-01/o.csv"
        );
        assert_eq!(render("{slot}", &v, Mode::Text), "2026-11-01T00:00:00Z");
        assert_eq!(render("{slot:%Y%m%dT%H%M%S}", &v, Mode::Text), "20261101T000000");
        assert_eq!(render("{{slot}} and {\"a\":1}", &v, Mode::Text), "{slot} and {\"a\":1}");
    }

    #[test]
    fn dates_are_read_in_the_schedules_zone() {
        // 23:30 UTC on 31 October is already 1 November in Berlin.
        let v = Values {
            slot_ms: ms("2026-10-31T23:30:00Z"),
            window: None,
            zone: "Europe/Berlin".parse().unwrap(),
        };
        assert_eq!(render("{date}", &v, Mode::Text), "2026-11-01");
        assert_eq!(render("{slot}", &v, Mode::Text), "2026-11-01T00:30:00+01:00");
    }

    #[test]
    fn in_a_query_times_are_quoted_sql_literals() {
        let v = window_values();
        let q = "select * from events where at >= {window_start} and at < {window_end}";
        check(q, true, Mode::Sql, "--source").unwrap();
        assert_eq!(
            render(q, &v, Mode::Sql),
            "select * from events where at >= '2026-11-01T00:00:00Z'::timestamptz and at < '2026-11-01T01:00:00Z'::timestamptz"
        );
        assert_eq!(
            render("where day = {date}", &v, Mode::Sql),
            "where day = '2026-11-01'::date"
        );
        // A format is a string literal; a quote in it cannot end the literal.
        assert_eq!(render("{date:%Y'%m}", &v, Mode::Sql), "'2026''11'");
    }

    #[test]
    fn a_placeholder_inside_quotes_of_a_query_is_refused() {
        let e = check("select 1 where d = '{date}'", false, Mode::Sql, "--source").unwrap_err();
        assert!(e.contains("inside quotes"), "{e}");
        // In a path, quotes mean nothing.
        check("/a'{date}'", false, Mode::Text, "--sink").unwrap();
        // A quoted string before the placeholder is closed again.
        check("select 'x' || {date}", false, Mode::Sql, "--source").unwrap();
    }

    #[test]
    fn unknown_placeholders_and_bad_formats_are_refused() {
        let e = check("at >= {windw_start}", true, Mode::Sql, "--source").unwrap_err();
        assert_eq!(
            e,
            "--source: unknown placeholder {windw_start}; this schedule offers {slot}, {date}, {window_start}, {window_end}"
        );
        let e = check("/x/{window_start}", false, Mode::Text, "--sink").unwrap_err();
        assert!(
            e.contains("unknown placeholder {window_start}"),
            "not a window schedule: {e}"
        );
        let e = check("/x/{slot:%Q}", false, Mode::Text, "--sink").unwrap_err();
        assert!(e.contains("invalid strftime format '%Q'"), "{e}");
        check("/x/{slot:%Y}/{date}", false, Mode::Text, "--sink").unwrap();
    }
}
