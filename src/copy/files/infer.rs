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

use arrow::compute::kernels::cast_utils::Parser;
use arrow::datatypes::{
    DataType, Date32Type, Field, Float64Type, Int64Type, Schema, TimeUnit, TimestampMicrosecondType,
};

use super::convert::TimeFormats;

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
    /// With a time format, values in it are timestamps (or dates) and ISO ones are not: one
    /// column holds one form, and a conversion reads the form the format names.
    fn of(value: &str, formats: &TimeFormats) -> Kind {
        let bytes = value.as_bytes();
        if value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false") {
            return Kind::Boolean;
        }
        match formats.timestamp(value) {
            Some(Ok(_)) => {
                let zoned = formats.timestamp.as_ref().is_some_and(|(_, zoned)| *zoned);
                return if zoned { Kind::TimestampTz } else { Kind::Timestamp };
            }
            Some(Err(())) if bytes.len() >= 16 && is_date_shape(&bytes[..10]) && bytes[13] == b':' => {
                return Kind::Text;
            }
            _ => {}
        }
        match formats.date(value) {
            Some(Ok(_)) => return Kind::Date,
            Some(Err(())) if bytes.len() == 10 && is_date_shape(bytes) => return Kind::Text,
            _ => {}
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

/// Whether a CSV field is a null: empty, or one of the `--csv-null` values.
pub(super) fn is_null(value: &str, nulls: &[String]) -> bool {
    value.is_empty() || nulls.iter().any(|n| n == value)
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

    /// Takes in one row; values in `nulls` (and empty ones) say nothing of the type.
    pub fn observe(&mut self, record: &csv::StringRecord, nulls: &[String], formats: &TimeFormats) {
        for (kind, value) in self.kinds.iter_mut().zip(record.iter()) {
            if *kind == Some(Kind::Text) || is_null(value, nulls) {
                continue;
            }
            let seen = Kind::of(value, formats);
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
            assert_eq!(Kind::of(value, &TimeFormats::default()), kind, "{value}");
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
            inference.observe(&csv::StringRecord::from(row.to_vec()), &[], &TimeFormats::default());
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
    fn a_time_format_replaces_iso_for_its_kind() {
        let formats = TimeFormats::new(Some("%d/%m/%Y %H:%M"), Some("%d/%m/%Y")).unwrap();
        let cases = [
            ("01/12/2026 10:11", Kind::Timestamp),
            ("01/12/2026", Kind::Date),
            ("31/02/2026", Kind::Text),
            ("2026-12-01 10:11:12", Kind::Text),
            ("2026-12-01", Kind::Text),
            ("42", Kind::Integer),
        ];
        for (value, kind) in cases {
            assert_eq!(Kind::of(value, &formats), kind, "{value}");
        }
        let zoned = TimeFormats::new(Some("%Y-%m-%d %H:%M %z"), None).unwrap();
        assert_eq!(Kind::of("2026-12-01 10:11 +0100", &zoned), Kind::TimestampTz);
        // Without a date format, ISO dates still are dates.
        assert_eq!(Kind::of("2026-12-01", &zoned), Kind::Date);
    }

    #[test]
    fn null_markers_say_nothing_of_a_columns_type() {
        let header = Schema::new(["n", "m"].map(|n| Field::new(n, DataType::Utf8, true)).to_vec());
        let infer = |nulls: &[String]| {
            let mut inference = Inference::new(2);
            for row in [["1", "NA"], ["NA", "\\N"], ["3", "2026-01-01"]] {
                inference.observe(&csv::StringRecord::from(row.to_vec()), nulls, &TimeFormats::default());
            }
            let schema = inference.apply(&header);
            schema
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(infer(&[]), [DataType::Utf8, DataType::Utf8]);
        assert_eq!(infer(&["NA".into(), "\\N".into()]), [DataType::Int64, DataType::Date32]);
    }
}
