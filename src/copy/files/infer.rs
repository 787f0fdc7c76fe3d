//! Column types for CSV sources, inferred from a sample of the rows (`--schema infer`, the
//! default when the sink stores types: Parquet, JSON Lines).
//!
//! CSV holds text; a Parquet file of text columns makes every reader cast by hand. Like
//! DuckDB's `read_csv`, the reader looks at the first [`SAMPLE_ROWS`] rows and gives each
//! column the narrowest type that every non-empty value in them has: integer (64-bit),
//! float (64-bit), boolean (`true`/`false`, any case), date (`YYYY-MM-DD`), timestamp
//! (`YYYY-MM-DD HH:MM:SS[.f]`, `T` or space), timestamp with time zone (the same with `Z` or
//! an offset, stored in UTC), else text. An empty field is a null. A number with a leading
//! zero (`007`, a ZIP code, an account number) keeps its column text: as an integer it would
//! lose the zero. Decimals are read as floats, as DuckDB and pyarrow do.
//!
//! A later value that does not fit its column's type is not turned into a null or a wrong
//! number: the job fails with the file, line and column (`--schema text` copies text).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, StringArray};
use arrow::compute::kernels::cast_utils::Parser;
use arrow::compute::{CastOptions, cast_with_options};
use arrow::datatypes::{
    DataType, Date32Type, Field, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};

use crate::copy::CopyError;

/// Rows the types are inferred from: DuckDB's default sample size.
pub(super) const SAMPLE_ROWS: usize = 20_480;

/// What one value looks like, from the most specific kind to text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Integer,
    Float,
    Boolean,
    Date,
    Timestamp,
    TimestampTz,
    Text,
}

impl Kind {
    fn of(value: &str) -> Kind {
        let bytes = value.as_bytes();
        if value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false") {
            return Kind::Boolean;
        }
        if bytes.len() == 10 && is_date_shape(bytes) && Date32Type::parse(value).is_some() {
            return Kind::Date;
        }
        if bytes.len() >= 16
            && is_date_shape(&bytes[..10])
            && matches!(bytes[10], b'T' | b't' | b' ')
            && bytes[13] == b':'
        {
            if TimestampMicrosecondType::parse(value).is_none() {
                return Kind::Text;
            }
            let time = &value[11..];
            let zoned = time.ends_with(['Z', 'z']) || time.contains(['+', '-']);
            return if zoned { Kind::TimestampTz } else { Kind::Timestamp };
        }
        if looks_numeric(bytes) {
            if leading_zero(bytes) {
                return Kind::Text;
            }
            if bytes.iter().all(|b| b.is_ascii_digit() || *b == b'-' || *b == b'+') && Int64Type::parse(value).is_some()
            {
                return Kind::Integer;
            }
            if Float64Type::parse(value).is_some() {
                return Kind::Float;
            }
            return Kind::Text;
        }
        Kind::Text
    }

    /// The kind both `self` and `other` values fit.
    fn join(self, other: Kind) -> Kind {
        match (self, other) {
            (a, b) if a == b => a,
            (Kind::Integer, Kind::Float) | (Kind::Float, Kind::Integer) => Kind::Float,
            // A column mixing dates with timestamps, or zoned with unzoned ones, is text:
            // choosing one would invent a time or a zone for the others.
            _ => Kind::Text,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Kind::Integer => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Boolean => DataType::Boolean,
            Kind::Date => DataType::Date32,
            Kind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Kind::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::Text => DataType::Utf8,
        }
    }
}

/// An optional sign, digits, at most one point, and an exponent: what a number looks like,
/// before the parser decides whether it is one (it would also take `inf`, `NaN`).
fn looks_numeric(bytes: &[u8]) -> bool {
    let digits = bytes
        .strip_prefix(b"-")
        .or_else(|| bytes.strip_prefix(b"+"))
        .unwrap_or(bytes);
    digits.first().is_some_and(|b| b.is_ascii_digit() || *b == b'.')
        && digits.iter().any(u8::is_ascii_digit)
        && digits
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
}

/// `0` followed by another digit: `007`, `-01`, but not `0`, `0.5` or `0e3`.
fn leading_zero(bytes: &[u8]) -> bool {
    let digits = bytes
        .strip_prefix(b"-")
        .or_else(|| bytes.strip_prefix(b"+"))
        .unwrap_or(bytes);
    digits.len() > 1 && digits[0] == b'0' && digits[1].is_ascii_digit()
}

fn is_date_shape(bytes: &[u8]) -> bool {
    bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit())
}

/// The kinds seen so far, a column at a time.
pub(super) struct Inference {
    /// `None`: only empty values so far.
    kinds: Vec<Option<Kind>>,
    pub rows: usize,
}

impl Inference {
    pub fn new(columns: usize) -> Self {
        Inference {
            kinds: vec![None; columns],
            rows: 0,
        }
    }

    pub fn observe(&mut self, record: &csv::StringRecord) {
        for (kind, value) in self.kinds.iter_mut().zip(record.iter()) {
            if value.is_empty() || *kind == Some(Kind::Text) {
                continue;
            }
            let seen = Kind::of(value);
            *kind = Some(kind.map_or(seen, |k| k.join(seen)));
        }
        self.rows += 1;
    }

    /// `schema` (all text) with the inferred types; a column with no value in the sample
    /// stays text.
    pub fn apply(&self, schema: &Schema) -> Schema {
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .zip(&self.kinds)
            .map(|(field, kind)| {
                let kind = kind.unwrap_or(Kind::Text);
                field.as_ref().clone().with_data_type(kind.data_type())
            })
            .collect();
        Schema::new_with_metadata(fields, schema.metadata().clone())
    }
}

/// A value that does not convert is an error, not a null.
const STRICT: CastOptions<'static> = CastOptions {
    safe: false,
    format_options: arrow::util::display::FormatOptions::new(),
};

/// Converts a batch of text columns to `typed`'s types. `lines[i]` is the line row `i`
/// starts on, for the message about a value that does not fit.
pub(super) fn convert(
    text: RecordBatch,
    typed: &SchemaRef,
    lines: &[u64],
    shown: &str,
) -> Result<RecordBatch, CopyError> {
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(text.num_columns());
    for (column, field) in text.columns().iter().zip(typed.fields()) {
        if field.data_type() == &DataType::Utf8 {
            columns.push(column.clone());
            continue;
        }
        match to_type(column, field.data_type()) {
            Ok(converted) => columns.push(converted),
            Err(_) => return Err(misfit(column, field, lines, shown)),
        }
    }
    RecordBatch::try_new_with_options(
        typed.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(text.num_rows())),
    )
    .map_err(|e| CopyError::fatal(format!("{shown}: {e}")))
}

/// Text to `to`. A timestamp with a zone is parsed as an instant in UTC (offsets applied)
/// and labelled UTC: arrow's cast to a named zone needs a time zone database for the name,
/// and the instant is all a zoned timestamp stores.
fn to_type(column: &ArrayRef, to: &DataType) -> Result<ArrayRef, arrow::error::ArrowError> {
    match to {
        DataType::Timestamp(TimeUnit::Microsecond, Some(zone)) => {
            let instants = cast_with_options(column, &DataType::Timestamp(TimeUnit::Microsecond, None), &STRICT)?;
            let instants = instants.as_primitive::<TimestampMicrosecondType>().clone();
            Ok(Arc::new(instants.with_timezone(zone.clone())))
        }
        _ => cast_with_options(column, to, &STRICT),
    }
}

/// The error for the first value of `column` that `field`'s type does not take.
fn misfit(column: &ArrayRef, field: &Field, lines: &[u64], shown: &str) -> CopyError {
    let values = column.as_any().downcast_ref::<StringArray>();
    let first_bad = values.and_then(|values| {
        (0..values.len()).find(|&i| {
            let one: ArrayRef = Arc::new(values.slice(i, 1));
            values.is_valid(i) && to_type(&one, field.data_type()).is_err()
        })
    });
    let (line, value) = match (first_bad, values) {
        (Some(i), Some(values)) => (lines.get(i).copied().unwrap_or(0), values.value(i).to_string()),
        _ => (lines.first().copied().unwrap_or(0), String::new()),
    };
    // One line: a quoted field may hold line breaks.
    let mut shown_value: String = value.chars().take(40).collect::<String>().escape_debug().collect();
    if value.chars().count() > 40 {
        shown_value.push('…');
    }
    CopyError::fatal(format!(
        "{shown} line {line} column '{}': '{shown_value}' is not {} (the type inferred from the first {SAMPLE_ROWS} rows; --schema text copies every column as text)",
        field.name(),
        type_name(field.data_type())
    ))
}

/// A type as the messages and the README name it.
pub(super) fn type_name(t: &DataType) -> &'static str {
    match t {
        DataType::Int64 => "an integer",
        DataType::Float64 => "a number",
        DataType::Boolean => "a boolean (true or false)",
        DataType::Date32 => "a date (YYYY-MM-DD)",
        DataType::Timestamp(_, None) => "a timestamp (YYYY-MM-DD HH:MM:SS)",
        DataType::Timestamp(_, Some(_)) => "a timestamp with a time zone (YYYY-MM-DD HH:MM:SS+HH:MM)",
        _ => "text",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_classified_as_duckdb_would() {
        let cases = [
            ("0", Kind::Integer),
            ("-42", Kind::Integer),
            ("+7", Kind::Integer),
            ("9223372036854775808", Kind::Float),
            ("007", Kind::Text),
            ("-01", Kind::Text),
            ("0.5", Kind::Float),
            ("1.50", Kind::Float),
            ("-1e-3", Kind::Float),
            (".5", Kind::Float),
            ("1.2.3", Kind::Text),
            ("inf", Kind::Text),
            ("NaN", Kind::Text),
            ("1-2", Kind::Text),
            ("TRUE", Kind::Boolean),
            ("false", Kind::Boolean),
            ("yes", Kind::Text),
            ("2026-12-02", Kind::Date),
            ("2026-13-02", Kind::Text),
            ("2026-12-02 10:11:12", Kind::Timestamp),
            ("2026-12-02T10:11:12.123456", Kind::Timestamp),
            ("2026-12-02 10:11", Kind::Text),
            ("2026-12-02T10:11:12Z", Kind::TimestampTz),
            ("2026-12-02 10:11:12+01:00", Kind::TimestampTz),
            ("2026-12-02 10:11:12-0530", Kind::TimestampTz),
            ("2026-12-02 25:11:12", Kind::Text),
            ("12/02/2026", Kind::Text),
            ("hello", Kind::Text),
        ];
        for (value, kind) in cases {
            assert_eq!(Kind::of(value), kind, "{value}");
        }
    }

    #[test]
    fn a_column_takes_the_narrowest_type_all_its_values_fit() {
        let header = Schema::new(
            ["i", "f", "mixed", "empty", "dates", "stamps"]
                .map(|n| Field::new(n, DataType::Utf8, true))
                .to_vec(),
        );
        let mut inference = Inference::new(6);
        for row in [
            ["1", "1", "1", "", "2026-01-01", "2026-01-01 00:00:00"],
            ["2", "2.5", "x", "", "", "2026-01-01 00:00:00Z"],
            ["", "3", "2", "", "2026-01-02", ""],
        ] {
            inference.observe(&csv::StringRecord::from(row.to_vec()));
        }
        let types: Vec<DataType> = inference
            .apply(&header)
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(
            types,
            [
                DataType::Int64,
                DataType::Float64,
                DataType::Utf8,
                DataType::Utf8,
                DataType::Date32,
                DataType::Utf8,
            ]
        );
        assert_eq!(inference.rows, 3);
    }

    #[test]
    fn a_value_that_does_not_fit_names_its_line_and_column() {
        let typed: SchemaRef = Arc::new(Schema::new(vec![Field::new("amount", DataType::Int64, true)]));
        let text = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("amount", DataType::Utf8, true)])),
            vec![Arc::new(StringArray::from(vec![Some("1"), None, Some("n/a")]))],
        )
        .unwrap();
        let err = convert(text.clone(), &typed, &[2, 3, 5], "share:in/a.csv").unwrap_err();
        assert!(!err.retryable);
        assert_eq!(
            err.message,
            "share:in/a.csv line 5 column 'amount': 'n/a' is not an integer (the type inferred from the first 20480 rows; --schema text copies every column as text)"
        );
        let fine = RecordBatch::try_new(
            text.schema(),
            vec![Arc::new(StringArray::from(vec![Some("1"), None, Some("-3")]))],
        )
        .unwrap();
        let converted = convert(fine, &typed, &[2, 3, 4], "share:in/a.csv").unwrap();
        assert_eq!(converted.column(0).data_type(), &DataType::Int64);
        assert_eq!(converted.column(0).null_count(), 1);
    }
}
