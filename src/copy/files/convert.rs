//! A CSV batch's text columns converted to the types its columns were given: inferred
//! (`infer`) or named by the operator (`--schema FILE`), with `--timestamp-format` and
//! `--date-format` for the values inference cannot know.
//!
//! Conversions are strict: a value that does not fit is never turned into a null or a
//! rounded number. Decimals are read digit by digit (a float would change `0.1`), and a value
//! with more digits after the point than the column's scale does not fit rather than being
//! rounded. What does not fit is found row by row ([`misfits`]) only once a column's
//! conversion failed, so the common path stays one arrow kernel per column.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Decimal128Array, RecordBatch, RecordBatchOptions, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType};
use arrow::error::ArrowError;

use crate::copy::CopyError;
use crate::job_spec::{ColumnType, NamedColumn};

/// A value that does not convert is an error, not a null.
const STRICT: CastOptions<'static> = CastOptions {
    safe: false,
    format_options: arrow::util::display::FormatOptions::new(),
};

/// The formats of timestamps and dates when they are not ISO 8601 (strftime, checked at
/// submit). A format given replaces the ISO form for its kind, in inference and conversion.
#[derive(Clone, Debug, Default)]
pub(super) struct TimeFormats {
    /// The format, and whether it holds an offset (its values are instants).
    pub timestamp: Option<(String, bool)>,
    pub date: Option<String>,
}

impl TimeFormats {
    pub fn new(timestamp: Option<&str>, date: Option<&str>) -> Result<Self, CopyError> {
        let timestamp = match timestamp {
            Some(f) => {
                let zoned = crate::job_spec::schema::check_timestamp_format(f)
                    .map_err(|why| CopyError::fatal(format!("--timestamp-format: {why}")))?;
                Some((f.to_string(), zoned))
            }
            None => None,
        };
        Ok(TimeFormats {
            timestamp,
            date: date.map(str::to_string),
        })
    }

    /// The instant or wall time `value` is in the timestamp format, in µs since the epoch.
    pub fn timestamp(&self, value: &str) -> Option<Result<i64, ()>> {
        let (format, zoned) = self.timestamp.as_ref()?;
        let micros = if *zoned {
            chrono::DateTime::parse_from_str(value, format).map(|t| t.timestamp_micros())
        } else {
            chrono::NaiveDateTime::parse_from_str(value, format).map(|t| t.and_utc().timestamp_micros())
        };
        Some(micros.map_err(|_| ()))
    }

    /// The day `value` is in the date format, in days since the epoch.
    pub fn date(&self, value: &str) -> Option<Result<i32, ()>> {
        let format = self.date.as_ref()?;
        let day = chrono::NaiveDate::parse_from_str(value, format)
            .map(|d| d.signed_duration_since(chrono::NaiveDate::default()).num_days() as i32);
        Some(day.map_err(|_| ()))
    }
}

/// How a CSV file's text becomes typed columns.
#[derive(Clone, Debug, Default)]
pub(super) struct Typing {
    /// The types were named with `--schema FILE`, not inferred: messages say so.
    pub given: bool,
    pub formats: TimeFormats,
}

/// The Arrow type a given column type is written as.
pub(super) fn data_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Date => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnType::Decimal { precision, scale } => DataType::Decimal128(precision, scale as i8),
        ColumnType::Text => DataType::Utf8,
    }
}

/// `header` (the file's columns, all text) with the types `given` names. Every column of
/// the file must be named and every name must be a column: a schema written for another
/// export would otherwise type the wrong columns or silently drop one.
pub(super) fn given_schema(header: &Schema, given: &[NamedColumn], shown: &str) -> Result<Schema, CopyError> {
    let names: Vec<&str> = header.fields().iter().map(|f| f.name().as_str()).collect();
    if let Some(absent) = given.iter().find(|c| !names.contains(&c.name.as_str())) {
        return Err(CopyError::fatal(format!(
            "{shown}: --schema names a column '{}' that the file does not have (its columns: {})",
            absent.name,
            names.join(", ")
        )));
    }
    let fields: Vec<Field> = header
        .fields()
        .iter()
        .map(|field| match given.iter().find(|c| &c.name == field.name()) {
            Some(c) => Ok(field.as_ref().clone().with_data_type(data_type(c.column_type))),
            None => Err(CopyError::fatal(format!(
                "{shown}: column '{}' of the file is not in --schema (a schema names every column; --columns leaves some out)",
                field.name()
            ))),
        })
        .collect::<Result<_, _>>()?;
    Ok(Schema::new_with_metadata(fields, header.metadata().clone()))
}

/// Converts a batch of text columns to `typed`'s types. `Err` holds the first value that
/// does not fit (see [`misfits`] for all of them).
pub(super) fn convert(text: &RecordBatch, typed: &SchemaRef, typing: &Typing) -> Result<RecordBatch, Misfit> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(text.num_columns());
    for (i, (column, field)) in text.columns().iter().zip(typed.fields()).enumerate() {
        if field.data_type() == &DataType::Utf8 {
            columns.push(column.clone());
            continue;
        }
        match to_type(column, field.data_type(), &typing.formats) {
            Ok(converted) => columns.push(converted),
            Err(_) => {
                let first = first_misfit(column, field, i, typing);
                return Err(first.unwrap_or_else(|| Misfit::unexplained(field, i)));
            }
        }
    }
    RecordBatch::try_new_with_options(
        typed.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(text.num_rows())),
    )
    .map_err(|e| Misfit {
        row: 0,
        column: 0,
        reason: e.to_string(),
    })
}

/// A value that does not fit its column's type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Misfit {
    /// The row in its batch and the column's index.
    pub row: usize,
    pub column: usize,
    /// `'n/a' is not an integer`: the value (shortened, on one line) and the type.
    pub reason: String,
}

impl Misfit {
    /// A conversion arrow refused although every value converts on its own: should not
    /// happen, but must still fail the copy rather than pass.
    fn unexplained(field: &Field, column: usize) -> Misfit {
        Misfit {
            row: 0,
            column,
            reason: format!(
                "the values do not convert to {}",
                type_name(field.data_type(), &TimeFormats::default())
            ),
        }
    }

    /// The message that fails a copy: `{shown} line N column 'c': 'v' is not …`, with where the
    /// type came from.
    pub fn error(&self, typed: &Schema, line: u64, shown: &str, typing: &Typing) -> CopyError {
        let name = typed.fields().get(self.column).map_or("?", |f| f.name().as_str());
        let origin = if typing.given {
            "the type --schema gives it".to_string()
        } else {
            format!(
                "the type inferred from the first {} rows; --schema text copies every column as text",
                super::infer::SAMPLE_ROWS
            )
        };
        CopyError::fatal(format!(
            "{shown} line {line} column '{name}': {} ({origin})",
            self.reason
        ))
    }
}

/// Every row of `text` with a value that does not fit, each with its first such value, in
/// row order.
pub(super) fn misfits(text: &RecordBatch, typed: &SchemaRef, typing: &Typing) -> Vec<Misfit> {
    let mut found: Vec<Option<Misfit>> = vec![None; text.num_rows()];
    for (i, (column, field)) in text.columns().iter().zip(typed.fields()).enumerate() {
        if field.data_type() == &DataType::Utf8 || to_type(column, field.data_type(), &typing.formats).is_ok() {
            continue;
        }
        for (row, slot) in found.iter_mut().enumerate() {
            if slot.is_none() {
                *slot = misfit_at(column, field, i, row, typing);
            }
        }
    }
    found.into_iter().flatten().collect()
}

fn first_misfit(column: &ArrayRef, field: &Field, index: usize, typing: &Typing) -> Option<Misfit> {
    (0..column.len()).find_map(|row| misfit_at(column, field, index, row, typing))
}

/// Whether the value at `row` fails to convert on its own, and how to say so.
fn misfit_at(column: &ArrayRef, field: &Field, index: usize, row: usize, typing: &Typing) -> Option<Misfit> {
    let values = column.as_any().downcast_ref::<StringArray>()?;
    if values.is_null(row) {
        return None;
    }
    let one: ArrayRef = Arc::new(values.slice(row, 1));
    to_type(&one, field.data_type(), &typing.formats).err()?;
    let value = values.value(row);
    // One line: a quoted field may hold line breaks.
    let mut shown: String = value.chars().take(40).collect::<String>().escape_debug().collect();
    if value.chars().count() > 40 {
        shown.push('…');
    }
    Some(Misfit {
        row,
        column: index,
        reason: format!("'{shown}' is not {}", type_name(field.data_type(), &typing.formats)),
    })
}

/// Text to `to`. A timestamp with a zone is parsed as an instant in UTC (offsets applied)
/// and labelled UTC: arrow's cast to a named zone needs a time zone database for the name,
/// and the instant is all a zoned timestamp stores.
fn to_type(column: &ArrayRef, to: &DataType, formats: &TimeFormats) -> Result<ArrayRef, ArrowError> {
    let strings = || {
        column
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| ArrowError::CastError("not text".into()))
    };
    let refused = |what: &str| ArrowError::CastError(format!("not {what}"));
    match to {
        DataType::Timestamp(TimeUnit::Microsecond, zone) if formats.timestamp.is_some() => {
            let micros: Vec<Option<i64>> = strings()?
                .iter()
                .map(|v| {
                    v.map(|v| {
                        formats
                            .timestamp(v)
                            .expect("a format")
                            .map_err(|()| refused("a timestamp"))
                    })
                    .transpose()
                })
                .collect::<Result<_, _>>()?;
            Ok(Arc::new(
                TimestampMicrosecondArray::from(micros).with_timezone_opt(zone.clone()),
            ))
        }
        DataType::Date32 if formats.date.is_some() => {
            let days: Vec<Option<i32>> = strings()?
                .iter()
                .map(|v| {
                    v.map(|v| formats.date(v).expect("a format").map_err(|()| refused("a date")))
                        .transpose()
                })
                .collect::<Result<_, _>>()?;
            Ok(Arc::new(Date32Array::from(days)))
        }
        DataType::Decimal128(precision, scale) => {
            let values: Vec<Option<i128>> = strings()?
                .iter()
                .map(|v| {
                    v.map(|v| decimal(v, *precision, *scale as u8).ok_or_else(|| refused("a decimal")))
                        .transpose()
                })
                .collect::<Result<_, _>>()?;
            Ok(Arc::new(
                Decimal128Array::from(values).with_precision_and_scale(*precision, *scale)?,
            ))
        }
        DataType::Timestamp(TimeUnit::Microsecond, Some(zone)) => {
            let instants = cast_with_options(column, &DataType::Timestamp(TimeUnit::Microsecond, None), &STRICT)?;
            let instants = instants.as_primitive::<TimestampMicrosecondType>().clone();
            Ok(Arc::new(instants.with_timezone(zone.clone())))
        }
        _ => cast_with_options(column, to, &STRICT),
    }
}

/// `value` as a decimal of `precision` digits, `scale` of them after the point, unscaled:
/// `-12.5` at scale 2 is -1250. `None` if it is not a plain decimal (no exponent, no
/// thousands separators), has more integer digits than fit, or more digits after the point
/// than the scale (unless they are zeros): rounding would change the value.
pub(super) fn decimal(value: &str, precision: u8, scale: u8) -> Option<i128> {
    let (negative, digits) = match value.as_bytes().first()? {
        b'-' => (true, &value[1..]),
        b'+' => (false, &value[1..]),
        _ => (false, value),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let scale = usize::from(scale);
    if frac.len() > scale && frac[scale..].bytes().any(|b| b != b'0') {
        return None;
    }
    let int = int.trim_start_matches('0');
    if int.len() + scale > usize::from(precision) {
        return None;
    }
    let frac_digits = frac.bytes().chain(std::iter::repeat(b'0')).take(scale);
    let mut unscaled: i128 = 0;
    for b in int.bytes().chain(frac_digits) {
        unscaled = unscaled * 10 + i128::from(b - b'0');
    }
    Some(if negative { -unscaled } else { unscaled })
}

/// A type as the messages and the README name it.
pub(super) fn type_name(t: &DataType, formats: &TimeFormats) -> String {
    match t {
        DataType::Int64 => "an integer".into(),
        DataType::Float64 => "a number".into(),
        DataType::Boolean => "a boolean (true or false)".into(),
        DataType::Date32 => match &formats.date {
            Some(f) => format!("a date ({f})"),
            None => "a date (YYYY-MM-DD)".into(),
        },
        DataType::Timestamp(_, zone) => match (&formats.timestamp, zone) {
            (Some((f, _)), _) => format!("a timestamp ({f})"),
            (None, None) => "a timestamp (YYYY-MM-DD HH:MM:SS)".into(),
            (None, Some(_)) => "a timestamp with a time zone (YYYY-MM-DD HH:MM:SS+HH:MM)".into(),
        },
        DataType::Decimal128(p, s) => format!("a decimal of at most {p} digits, {s} after the point"),
        _ => "text".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(values: &[Option<&str>]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("v", DataType::Utf8, true)])),
            vec![Arc::new(StringArray::from(values.to_vec()))],
        )
        .unwrap()
    }

    fn typed(t: DataType) -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("v", t, true)]))
    }

    #[test]
    fn decimals_are_exact_or_refused() {
        let cases = [
            ("12.5", Some(1250)),
            ("-0.01", Some(-1)),
            ("+7", Some(700)),
            ("007.10", Some(710)),
            (".5", Some(50)),
            ("1.500", Some(150)),
            ("9999999999.99", Some(999_999_999_999)),
            ("99999999999.99", None),
            ("1.234", None),
            ("1e3", None),
            ("1,000.00", None),
            ("", None),
            ("-", None),
            (".", None),
        ];
        for (value, expected) in cases {
            assert_eq!(decimal(value, 12, 2), expected, "{value}");
        }
        let converted = convert(
            &text(&[Some("0.10"), None]),
            &typed(DataType::Decimal128(12, 2)),
            &Typing::default(),
        )
        .unwrap();
        let column = converted.column(0).as_primitive::<arrow::datatypes::Decimal128Type>();
        assert_eq!(column.value_as_string(0), "0.10");
        assert!(column.is_null(1));
    }

    #[test]
    fn time_formats_replace_iso_for_their_kind() {
        let typing = Typing {
            given: true,
            formats: TimeFormats::new(Some("%d/%m/%Y %H:%M"), Some("%d.%m.%Y")).unwrap(),
        };
        let stamps = convert(
            &text(&[Some("01/12/2026 10:11"), None]),
            &typed(DataType::Timestamp(TimeUnit::Microsecond, None)),
            &typing,
        )
        .unwrap();
        let at = stamps.column(0).as_primitive::<TimestampMicrosecondType>().value(0);
        assert_eq!(at, 1_796_119_860_000_000, "2026-12-01T10:11:00");
        let days = convert(&text(&[Some("02.12.2026")]), &typed(DataType::Date32), &typing).unwrap();
        assert_eq!(
            days.column(0).as_primitive::<arrow::datatypes::Date32Type>().value(0),
            20_789
        );
        let iso = convert(
            &text(&[Some("01/12/2026 10:11"), Some("2026-12-01 10:11:00")]),
            &typed(DataType::Timestamp(TimeUnit::Microsecond, None)),
            &typing,
        )
        .unwrap_err();
        assert_eq!(
            iso,
            Misfit {
                row: 1,
                column: 0,
                reason: "'2026-12-01 10:11:00' is not a timestamp (%d/%m/%Y %H:%M)".into()
            }
        );
        let zoned = Typing {
            formats: TimeFormats::new(Some("%d/%m/%Y %H:%M %z"), None).unwrap(),
            ..Typing::default()
        };
        let utc = convert(
            &text(&[Some("01/12/2026 11:11 +0100")]),
            &typed(DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))),
            &zoned,
        )
        .unwrap();
        assert_eq!(utc.column(0).as_primitive::<TimestampMicrosecondType>().value(0), at);
    }

    #[test]
    fn misfits_name_each_bad_row_once_with_its_first_bad_value() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("d", DataType::Decimal128(5, 2), true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("n", DataType::Utf8, true),
                Field::new("d", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(StringArray::from(vec![Some("1"), Some("x"), Some("3"), Some("y")])),
                Arc::new(StringArray::from(vec![
                    Some("1.5"),
                    Some("1.5"),
                    Some("1.555"),
                    Some("zz"),
                ])),
            ],
        )
        .unwrap();
        let found = misfits(&batch, &schema, &Typing::default());
        let rows: Vec<(usize, usize)> = found.iter().map(|m| (m.row, m.column)).collect();
        assert_eq!(rows, [(1, 0), (2, 1), (3, 0)]);
        assert_eq!(
            found[1].reason,
            "'1.555' is not a decimal of at most 5 digits, 2 after the point"
        );
        let e = found[0].error(&schema, 9, "share:a.csv", &Typing::default());
        assert_eq!(
            e.message,
            "share:a.csv line 9 column 'n': 'x' is not an integer (the type inferred from the first 20480 rows; --schema text copies every column as text)"
        );
        let given = Typing {
            given: true,
            ..Typing::default()
        };
        assert_eq!(
            found[1].error(&schema, 10, "share:a.csv", &given).message,
            "share:a.csv line 10 column 'd': '1.555' is not a decimal of at most 5 digits, 2 after the point (the type --schema gives it)"
        );
    }
}
