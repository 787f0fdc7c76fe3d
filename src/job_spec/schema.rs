//! Column types an operator gives a CSV source (`--schema FILE`), read from the file's text:
//! a JSON object (`{"id": "int64", "amount": "decimal(12,2)"}`), a JSON list of
//! `{"name": …, "type": …}` objects (the shape `job show --json` prints under `schema`), or
//! `name:type` pairs separated by commas or line breaks (`id:int64, amount:decimal(12,2)`).
//!
//! The CLI reads the file and sends its text; the spec keeps the parsed columns, so a job
//! never depends on a file on the operator's machine. Whether the names match the source's
//! header can only be known when the copy opens it.

use serde::{Deserialize, Serialize};

/// A type a CSV column can be given: the kinds inference finds, plus exact decimals.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColumnType {
    Int64,
    Float64,
    Boolean,
    Date,
    Timestamp,
    /// An instant: offsets in the text are applied and the value stored in UTC.
    TimestampTz,
    /// Exact: read from the text digit by digit, never through a float.
    Decimal {
        precision: u8,
        scale: u8,
    },
    Text,
}

/// The names a type goes by in a schema file, for the message that refuses another.
const TYPE_NAMES: &str = "int64, float64, boolean, date, timestamp, timestamptz, decimal(P,S), text";

/// The most digits an Arrow Decimal128 holds.
pub const MAX_DECIMAL_PRECISION: u8 = 38;

impl ColumnType {
    /// Reads a type name, in any case; Arrow's own names (`Int64`, `Utf8`, `Date32`,
    /// `Decimal128(12, 2)`) are taken too, so what `job show` printed can be given back.
    pub fn parse(text: &str) -> Result<ColumnType, String> {
        let name: String = text
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        let simple = match name.as_str() {
            "int64" | "bigint" => Some(ColumnType::Int64),
            "float64" | "double" => Some(ColumnType::Float64),
            "boolean" | "bool" => Some(ColumnType::Boolean),
            "date" | "date32" => Some(ColumnType::Date),
            "timestamp" => Some(ColumnType::Timestamp),
            "timestamptz" => Some(ColumnType::TimestampTz),
            "text" | "string" | "utf8" => Some(ColumnType::Text),
            _ => None,
        };
        if let Some(t) = simple {
            return Ok(t);
        }
        let digits = name
            .strip_prefix("decimal128(")
            .or_else(|| name.strip_prefix("decimal("))
            .and_then(|rest| rest.strip_suffix(')'));
        let Some(digits) = digits else {
            return Err(format!("'{}' is not a type ({TYPE_NAMES})", text.trim()));
        };
        let parsed = digits
            .split_once(',')
            .and_then(|(p, s)| Some((p.parse::<u8>().ok()?, s.parse::<u8>().ok()?)));
        match parsed {
            Some((precision, scale)) if (1..=MAX_DECIMAL_PRECISION).contains(&precision) && scale <= precision => {
                Ok(ColumnType::Decimal { precision, scale })
            }
            _ => Err(format!(
                "'{}' is not a decimal type: decimal(P,S) takes 1 to {MAX_DECIMAL_PRECISION} digits P, S of them after the point",
                text.trim()
            )),
        }
    }
}

/// One column of a given schema.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedColumn {
    pub name: String,
    pub column_type: ColumnType,
}

/// Reads a schema file's text; the error is one line, without the flag's name.
pub fn parse_schema(text: &str) -> Result<Vec<NamedColumn>, String> {
    let trimmed = text.trim();
    let pairs: Vec<(String, String)> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        json_pairs(trimmed)?
    } else {
        text_pairs(trimmed)?
    };
    if pairs.is_empty() {
        return Err("the schema names no column".into());
    }
    let mut columns: Vec<NamedColumn> = Vec::with_capacity(pairs.len());
    for (name, type_name) in pairs {
        if name.is_empty() {
            return Err(format!("a column of type '{type_name}' has no name"));
        }
        if columns.iter().any(|c| c.name == name) {
            return Err(format!("column '{name}' is named twice"));
        }
        let column_type = ColumnType::parse(&type_name).map_err(|why| format!("column '{name}': {why}"))?;
        columns.push(NamedColumn { name, column_type });
    }
    Ok(columns)
}

fn json_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    use serde_json::Value;
    let bad = |e: serde_json::Error| format!("not valid JSON: {e}");
    // Objects are read pair by pair, so that a name given twice is caught, not overwritten.
    if text.starts_with('{') {
        let pairs: OrderedPairs = serde_json::from_str(text).map_err(bad)?;
        return Ok(pairs.0);
    }
    let items: Vec<Value> = serde_json::from_str(text).map_err(bad)?;
    items
        .iter()
        .map(|item| match (item.get("name"), item.get("type")) {
            (Some(Value::String(name)), Some(Value::String(t))) => Ok((name.clone(), t.clone())),
            _ => Err(format!("{item} is not {{\"name\": \"…\", \"type\": \"…\"}}")),
        })
        .collect()
}

/// A JSON object of strings, as its pairs in order (repeats kept).
struct OrderedPairs(Vec<(String, String)>);

impl<'de> Deserialize<'de> for OrderedPairs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> serde::de::Visitor<'de> for Pairs {
            type Value = OrderedPairs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of column names and type names")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<OrderedPairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                Ok(OrderedPairs(pairs))
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

/// `name:type` pairs apart by commas or line breaks; a comma inside parentheses belongs to
/// the type (`decimal(12,2)`).
fn text_pairs(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' | '\n' if depth == 0 => {
                items.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&text[start..]);
    items
        .into_iter()
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.rsplit_once(':')
                .map(|(name, t)| (name.trim().to_string(), t.trim().to_string()))
                .ok_or_else(|| format!("'{item}' is not name:type"))
        })
        .collect()
}

/// Checks a `--timestamp-format` (strftime, as chrono reads it) by writing a known instant
/// with it and reading that back: a format that cannot read its own output would refuse every
/// value. `true` if it holds an offset (`%z`, `%:z`), so that its values are instants.
pub fn check_timestamp_format(format: &str) -> Result<bool, String> {
    let text = sample(format)?;
    if chrono::DateTime::parse_from_str(&text, format).is_ok() {
        return Ok(true);
    }
    match chrono::NaiveDateTime::parse_from_str(&text, format) {
        Ok(_) => Ok(false),
        Err(e) => Err(format!(
            "'{format}' does not read back the timestamp it writes ('{text}': {e}); a timestamp needs a date and a time of day (dates alone: --date-format)"
        )),
    }
}

/// Checks a `--date-format` as [`check_timestamp_format`] does.
pub fn check_date_format(format: &str) -> Result<(), String> {
    let text = sample(format)?;
    chrono::NaiveDate::parse_from_str(&text, format)
        .map(|_| ())
        .map_err(|e| format!("'{format}' does not read back the date it writes ('{text}': {e})"))
}

/// 2026-12-01 10:11:12.345678 at +01:00, written with `format`.
fn sample(format: &str) -> Result<String, String> {
    use chrono::format::{Item, StrftimeItems};
    use chrono::{FixedOffset, TimeZone};
    use std::fmt::Write;
    if format.trim().is_empty() {
        return Err("an empty format".into());
    }
    // chrono panics when it writes with a bad specifier: look first.
    if StrftimeItems::new(format).any(|item| matches!(item, Item::Error)) {
        return Err(format!(
            "'{format}' is not a strftime format (a '%' names no field chrono knows)"
        ));
    }
    let offset = FixedOffset::east_opt(3600).expect("one hour east");
    let at = offset
        .with_ymd_and_hms(2026, 12, 1, 10, 11, 12)
        .single()
        .expect("a valid time")
        + chrono::Duration::microseconds(345_678);
    let mut text = String::new();
    write!(text, "{}", at.format(format)).map_err(|_| format!("'{format}' cannot write a timestamp"))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formats_are_checked_by_reading_back_what_they_write() {
        assert_eq!(check_timestamp_format("%d/%m/%Y %H:%M"), Ok(false));
        assert_eq!(check_timestamp_format("%Y-%m-%dT%H:%M:%S%.f%:z"), Ok(true));
        assert_eq!(check_timestamp_format("%d.%m.%Y %H:%M:%S %z"), Ok(true));
        assert_eq!(check_date_format("%d/%m/%Y"), Ok(()));
        let e = check_timestamp_format("%d/%m/%Y").unwrap_err();
        assert!(
            e.starts_with("'%d/%m/%Y' does not read back the timestamp it writes ('01/12/2026': "),
            "{e}"
        );
        assert!(e.ends_with("(dates alone: --date-format)"), "{e}");
        assert_eq!(
            check_timestamp_format("%Y-%m-%d %Q").unwrap_err(),
            "'%Y-%m-%d %Q' is not a strftime format (a '%' names no field chrono knows)"
        );
        assert!(
            check_date_format("%m/%Y")
                .unwrap_err()
                .starts_with("'%m/%Y' does not read back the date")
        );
        assert_eq!(check_date_format(" ").unwrap_err(), "an empty format");
    }

    fn types(text: &str) -> Vec<(String, ColumnType)> {
        parse_schema(text)
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.column_type))
            .collect()
    }

    #[test]
    fn the_three_shapes_give_the_same_columns() {
        let expected = vec![
            ("id".to_string(), ColumnType::Int64),
            (
                "amount".to_string(),
                ColumnType::Decimal {
                    precision: 12,
                    scale: 2,
                },
            ),
            ("when".to_string(), ColumnType::TimestampTz),
            ("note".to_string(), ColumnType::Text),
        ];
        assert_eq!(
            types(r#"{"id": "int64", "amount": "decimal(12,2)", "when": "timestamptz", "note": "text"}"#),
            expected
        );
        assert_eq!(
            types(
                r#"[{"name": "id", "type": "Int64"}, {"name": "amount", "type": "Decimal128(12, 2)"},
                    {"name": "when", "type": "TIMESTAMPTZ"}, {"name": "note", "type": "Utf8"}]"#
            ),
            expected
        );
        assert_eq!(
            types("id:int64, amount:decimal(12, 2),when:timestamptz\nnote : text\n"),
            expected
        );
        assert_eq!(
            types("a:bool\nb:date\nc:float64\nd:timestamp")[0].1,
            ColumnType::Boolean
        );
    }

    #[test]
    fn bad_schemas_say_what_is_wrong_in_one_line() {
        let cases = [
            (
                "id:int64,amount:money",
                "column 'amount': 'money' is not a type (int64, float64, boolean, date, timestamp, timestamptz, decimal(P,S), text)",
            ),
            (
                "amount:decimal(40,2)",
                "column 'amount': 'decimal(40,2)' is not a decimal type: decimal(P,S) takes 1 to 38 digits P, S of them after the point",
            ),
            (
                "amount:decimal(4,5)",
                "column 'amount': 'decimal(4,5)' is not a decimal type",
            ),
            (r#"{"id": "int64", "id": "text"}"#, "column 'id' is named twice"),
            ("id int64", "'id int64' is not name:type"),
            ("{\"id\": ", "not valid JSON: "),
            (r#"[{"name": "id"}]"#, "is not {\"name\": \"…\", \"type\": \"…\"}"),
            ("  \n", "the schema names no column"),
            (":int64", "a column of type 'int64' has no name"),
        ];
        for (text, expected) in cases {
            let e = parse_schema(text).expect_err(text);
            assert!(e.contains(expected), "{text}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}
