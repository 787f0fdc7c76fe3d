//! Arrow record batches written as PostgreSQL's COPY text format (tab-separated, `\N` for
//! NULL, backslash escapes), the sink side's hot loop.
//!
//! Text rather than binary: the server parses each value into the column's own type, so a
//! string column can load into any type PostgreSQL can read from text (intervals, inet,
//! enums, …), and a value it cannot read is refused by the server with the row and column
//! named. Which source column goes into which table column, and whether its Arrow type
//! can go there at all, is settled first ([`map_columns`]), so that, say, a date column
//! aimed at an integer column fails before any row is sent. Lists go into array columns
//! as array literals.

use std::fmt::Write as _;

use arrow::array::{
    Array, ArrayRef, AsArray as _, BinaryArray, BinaryViewArray, BooleanArray, FixedSizeBinaryArray, Float32Array,
    Float64Array, Int64Array, LargeBinaryArray, LargeStringArray, ListArray, StringArray, StringViewArray, UInt64Array,
};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::{
    DataType, Date32Type, Date64Type, Schema, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use tokio_postgres::types::Type;

/// What a sink column accepts, by the kind of its (base) type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Target {
    Bool,
    Integer,
    Float,
    Numeric,
    /// text, varchar, char(n), name: any scalar value, as text.
    Text,
    Json,
    Bytea,
    Uuid,
    Date,
    Time,
    Timestamp,
    /// An array of a built-in type: lists (written as array literals), or strings.
    Array,
    /// Any other type (interval, inet, an enum, …): only strings, which the server parses.
    Other,
}

/// The kind of a column whose (base) type has this OID.
pub(super) fn target_for(oid: u32) -> Target {
    let Some(ty) = Type::from_oid(oid) else {
        return Target::Other;
    };
    if matches!(ty.kind(), tokio_postgres::types::Kind::Array(_)) {
        return Target::Array;
    }
    match ty {
        Type::BOOL => Target::Bool,
        Type::INT2 | Type::INT4 | Type::INT8 => Target::Integer,
        Type::FLOAT4 | Type::FLOAT8 => Target::Float,
        Type::NUMERIC => Target::Numeric,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => Target::Text,
        Type::JSON | Type::JSONB => Target::Json,
        Type::BYTEA => Target::Bytea,
        Type::UUID => Target::Uuid,
        Type::DATE => Target::Date,
        Type::TIME | Type::TIMETZ => Target::Time,
        Type::TIMESTAMP | Type::TIMESTAMPTZ => Target::Timestamp,
        _ => Target::Other,
    }
}

/// A column of the sink table that COPY writes (generated columns are left out).
#[derive(Clone, Debug)]
pub(super) struct SinkColumn {
    pub name: String,
    /// As `format_type` prints it, e.g. `character varying(20)`.
    pub type_name: String,
    pub target: Target,
    /// NOT NULL without a default: a source without this column cannot load.
    pub required: bool,
}

/// Whether values of an Arrow type can be written to a column of this kind.
fn accepts(arrow: &DataType, target: Target) -> bool {
    use DataType as D;
    use Target as T;
    match arrow {
        D::Null | D::Utf8 | D::LargeUtf8 | D::Utf8View => true,
        D::Dictionary(_, values) => accepts(values, target),
        D::Boolean => matches!(target, T::Bool | T::Text),
        D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32 | D::UInt64 => {
            matches!(target, T::Integer | T::Float | T::Numeric | T::Text)
        }
        // Into an integer column only whole numbers fit; the server says which row did not.
        D::Float16 | D::Float32 | D::Float64 | D::Decimal128(..) | D::Decimal256(..) => {
            matches!(target, T::Integer | T::Float | T::Numeric | T::Text)
        }
        D::Date32 | D::Date64 | D::Timestamp(..) => matches!(target, T::Date | T::Timestamp | T::Text),
        D::Time32(_) | D::Time64(_) => matches!(target, T::Time | T::Text),
        D::Binary | D::LargeBinary | D::BinaryView => target == T::Bytea,
        D::FixedSizeBinary(16) => matches!(target, T::Uuid | T::Bytea),
        D::FixedSizeBinary(_) => target == T::Bytea,
        D::List(element) | D::LargeList(element) => target == T::Array && !element.data_type().is_nested(),
        _ => false,
    }
}

/// The names shir gives the columns of a CSV file without a header (`column_1`, …): such a
/// source has no names to match, and goes into the table's columns by position.
fn generated_names(schema: &Schema) -> bool {
    schema
        .fields()
        .iter()
        .enumerate()
        .all(|(i, f)| *f.name() == format!("column_{}", i + 1))
}

/// The sink column a source column of this name loads into: the one of the same name, or
/// else the one that matches ignoring case (as PostgreSQL folds an unquoted `Amount` to
/// `amount`), if only one does.
fn find<'a>(name: &str, sink: &'a [SinkColumn], table: &str) -> Result<Option<&'a SinkColumn>, String> {
    if let Some(exact) = sink.iter().find(|c| c.name == name) {
        return Ok(Some(exact));
    }
    let mut folded = sink.iter().filter(|c| c.name.eq_ignore_ascii_case(name));
    match (folded.next(), folded.next()) {
        (Some(one), None) => Ok(Some(one)),
        (Some(a), Some(b)) => Err(format!(
            "source column \"{name}\" matches both \"{}\" and \"{}\" of sink table {table}, which differ only in case",
            a.name, b.name
        )),
        _ => Ok(None),
    }
}

/// The sink columns the source's columns load into, in the source's order: matched by
/// name (see [`find`]), each checked to take the source column's type. A source column the
/// table lacks is an error; a table column the source lacks gets its default (NULL unless
/// the table says otherwise), and is an error if it is NOT NULL without one. A source of
/// generated names (a CSV file without a header) goes by position instead.
pub(super) fn map_columns(schema: &Schema, sink: &[SinkColumn], table: &str) -> Result<Vec<SinkColumn>, String> {
    let any_named = schema
        .fields()
        .iter()
        .any(|f| sink.iter().any(|c| c.name.eq_ignore_ascii_case(f.name())));
    let mapped: Vec<SinkColumn> = if !any_named && generated_names(schema) {
        if schema.fields().len() != sink.len() {
            return Err(format!(
                "sink table {table} has {} columns, the source (without a header) has {}",
                sink.len(),
                schema.fields().len()
            ));
        }
        sink.to_vec()
    } else {
        let mut mapped: Vec<SinkColumn> = Vec::with_capacity(schema.fields().len());
        for (i, field) in schema.fields().iter().enumerate() {
            let Some(column) = find(field.name(), sink, table)? else {
                let names: Vec<&str> = sink.iter().map(|c| c.name.as_str()).collect();
                return Err(format!(
                    "sink table {table} has no column \"{}\" (source column {}); its columns: {}",
                    field.name(),
                    i + 1,
                    names.join(", ")
                ));
            };
            if let Some(j) = mapped.iter().position(|m| m.name == column.name) {
                return Err(format!(
                    "source columns \"{}\" and \"{}\" would both load into column \"{}\" of sink table {table}",
                    schema.field(j).name(),
                    field.name(),
                    column.name
                ));
            }
            mapped.push(column.clone());
        }
        if let Some(missing) = sink
            .iter()
            .find(|c| c.required && !mapped.iter().any(|m| m.name == c.name))
        {
            return Err(format!(
                "column \"{}\" of sink table {table} is NOT NULL without a default, and the source has no column of that name",
                missing.name
            ));
        }
        mapped
    };
    for (i, (field, column)) in schema.fields().iter().zip(&mapped).enumerate() {
        if !accepts(field.data_type(), column.target) {
            return Err(format!(
                "source column {} (\"{}\", {}) cannot be written to column \"{}\" ({}) of sink table {table}",
                i + 1,
                field.name(),
                field.data_type(),
                column.name,
                column.type_name
            ));
        }
    }
    Ok(mapped)
}

/// One column of a batch, ready to be written value by value.
enum Writer<'a> {
    Null,
    Str(&'a StringArray),
    LargeStr(&'a LargeStringArray),
    StrView(&'a StringViewArray),
    Bool(&'a BooleanArray),
    I64(&'a Int64Array),
    U64(&'a UInt64Array),
    F32(&'a Float32Array),
    F64(&'a Float64Array),
    Bin(&'a BinaryArray),
    LargeBin(&'a LargeBinaryArray),
    BinView(&'a BinaryViewArray),
    /// Fixed-size binary: a uuid column takes the bare hex, bytea `\x` hex.
    Fixed(&'a FixedSizeBinaryArray, bool),
    Date(&'a ScalarBuffer<i32>),
    /// Date64: milliseconds since 1970.
    DateMillis(&'a ScalarBuffer<i64>),
    /// Timestamps in microseconds after scaling; `true` when the Arrow type has a time zone
    /// (the value is a UTC instant).
    Ts(&'a ScalarBuffer<i64>, TimeUnit, bool),
    /// Decimals and times, as Arrow prints them (PostgreSQL reads that text).
    Formatted(ArrayFormatter<'a>),
    /// A list, as an array literal: `{"1","2",NULL}`.
    List(&'a ListArray, Element<'a>),
}

/// How a list's elements are written inside an array literal (before quoting).
enum Element<'a> {
    Str(&'a StringArray),
    Bin(&'a BinaryArray),
    /// Anything else as Arrow prints it: numbers, decimals, booleans, dates, timestamps
    /// (`2024-02-29T07:04:56.789+00:00`), all of which PostgreSQL reads.
    Formatted(ArrayFormatter<'a>),
}

/// Casts the types the writers do not handle directly to one they do: dictionaries to
/// their values, narrow integers to Int64, half floats to Float32.
fn normalise(array: &ArrayRef) -> Result<ArrayRef, String> {
    use DataType as D;
    let to = match array.data_type() {
        D::Dictionary(_, values) => Some((**values).clone()),
        D::Int8 | D::Int16 | D::Int32 | D::UInt8 | D::UInt16 | D::UInt32 => Some(D::Int64),
        D::Float16 => Some(D::Float32),
        _ => None,
    };
    match to {
        None => Ok(array.clone()),
        Some(to) => {
            let cast = arrow::compute::cast(array, &to).map_err(|e| format!("{e}"))?;
            // A dictionary of narrow integers still needs its second step.
            if matches!(cast.data_type(), D::Dictionary(..)) {
                Ok(cast)
            } else {
                normalise(&cast)
            }
        }
    }
}

fn writer<'a>(array: &'a ArrayRef, target: Target) -> Result<Writer<'a>, String> {
    use DataType as D;
    Ok(match array.data_type() {
        D::Null => Writer::Null,
        D::Utf8 => Writer::Str(array.as_string::<i32>()),
        D::LargeUtf8 => Writer::LargeStr(array.as_string::<i64>()),
        D::Utf8View => Writer::StrView(array.as_string_view()),
        D::Boolean => Writer::Bool(array.as_boolean()),
        D::Int64 => Writer::I64(array.as_primitive()),
        D::UInt64 => Writer::U64(array.as_primitive()),
        D::Float32 => Writer::F32(array.as_primitive()),
        D::Float64 => Writer::F64(array.as_primitive()),
        D::Binary => Writer::Bin(array.as_binary::<i32>()),
        D::LargeBinary => Writer::LargeBin(array.as_binary::<i64>()),
        D::BinaryView => Writer::BinView(array.as_binary_view()),
        D::FixedSizeBinary(_) => Writer::Fixed(array.as_fixed_size_binary(), target == Target::Uuid),
        D::Date32 => Writer::Date(array.as_primitive::<Date32Type>().values()),
        D::Date64 => Writer::DateMillis(array.as_primitive::<Date64Type>().values()),
        D::Timestamp(unit, tz) => {
            let values = match unit {
                TimeUnit::Second => array.as_primitive::<TimestampSecondType>().values(),
                TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().values(),
                TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().values(),
                TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().values(),
            };
            Writer::Ts(values, *unit, tz.is_some())
        }
        D::Decimal128(..) | D::Decimal256(..) | D::Time32(_) | D::Time64(_) => Writer::Formatted(
            ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()).map_err(|e| format!("{e}"))?,
        ),
        D::List(_) => {
            let list = array.as_list::<i32>();
            let values = list.values();
            let element = match values.data_type() {
                D::Utf8 => Element::Str(values.as_string::<i32>()),
                D::Binary => Element::Bin(values.as_binary::<i32>()),
                _ => Element::Formatted(
                    ArrayFormatter::try_new(values.as_ref(), &FormatOptions::default()).map_err(|e| format!("{e}"))?,
                ),
            };
            Writer::List(list, element)
        }
        other => return Err(format!("Arrow type {other} cannot be written to PostgreSQL")),
    })
}

/// Appends `batch` to `out` as COPY text rows. `first_row` is the number of rows already
/// sent, for messages.
pub(super) fn encode(
    batch: &RecordBatch,
    sink: &[SinkColumn],
    first_row: u64,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let arrays: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(sink)
        .map(|(array, column)| normalise(array).map_err(|e| format!("column \"{}\": {e}", column.name)))
        .collect::<Result<_, _>>()?;
    let writers: Vec<(Writer<'_>, Option<&NullBuffer>)> = arrays
        .iter()
        .zip(sink)
        .map(|(array, column)| {
            writer(array, column.target)
                .map(|w| (w, array.nulls()))
                .map_err(|e| format!("column \"{}\": {e}", column.name))
        })
        .collect::<Result<_, _>>()?;

    for row in 0..batch.num_rows() {
        for (i, (writer, nulls)) in writers.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            if nulls.is_some_and(|n| n.is_null(row)) || matches!(writer, Writer::Null) {
                out.extend_from_slice(b"\\N");
                continue;
            }
            write_value(writer, row, out)
                .map_err(|why| format!("row {}, column \"{}\": {why}", first_row + row as u64 + 1, sink[i].name))?;
        }
        out.push(b'\n');
    }
    Ok(())
}

fn write_value(writer: &Writer<'_>, row: usize, out: &mut Vec<u8>) -> Result<(), String> {
    match writer {
        Writer::Null => out.extend_from_slice(b"\\N"),
        Writer::Str(a) => escape(a.value(row).as_bytes(), out),
        Writer::LargeStr(a) => escape(a.value(row).as_bytes(), out),
        Writer::StrView(a) => escape(a.value(row).as_bytes(), out),
        Writer::Bool(a) => out.push(if a.value(row) { b't' } else { b'f' }),
        Writer::I64(a) => push_display(out, a.value(row)),
        Writer::U64(a) => push_display(out, a.value(row)),
        Writer::F32(a) => match a.value(row) {
            v if v.is_finite() => push_display(out, v),
            v => not_finite(v.into(), out),
        },
        Writer::F64(a) => match a.value(row) {
            v if v.is_finite() => push_display(out, v),
            v => not_finite(v, out),
        },
        Writer::Bin(a) => bytea(a.value(row), out),
        Writer::LargeBin(a) => bytea(a.value(row), out),
        Writer::BinView(a) => bytea(a.value(row), out),
        Writer::Fixed(a, true) => hex(a.value(row), out),
        Writer::Fixed(a, false) => bytea(a.value(row), out),
        Writer::Date(days) => date(days[row] as i64, out),
        Writer::DateMillis(ms) => date(ms[row].div_euclid(86_400_000), out),
        Writer::Ts(values, unit, utc) => {
            let v = values[row];
            let micros = match unit {
                TimeUnit::Second => v.checked_mul(1_000_000),
                TimeUnit::Millisecond => v.checked_mul(1_000),
                TimeUnit::Microsecond => Some(v),
                // PostgreSQL keeps microseconds; the nanoseconds below are dropped.
                TimeUnit::Nanosecond => Some(v.div_euclid(1_000)),
            }
            .ok_or("a timestamp outside PostgreSQL's range")?;
            timestamp(micros, *utc, out);
        }
        Writer::Formatted(f) => {
            let mut text = String::new();
            write!(text, "{}", f.value(row)).map_err(|e| format!("{e}"))?;
            escape(text.as_bytes(), out);
        }
        Writer::List(list, element) => {
            let mut literal = Vec::new();
            array_literal(list, element, row, &mut literal)?;
            escape(&literal, out);
        }
    }
    Ok(())
}

/// One row of a list as a PostgreSQL array literal, every element quoted (which any type
/// accepts) with `"` and `\` escaped inside; NULL elements bare.
fn array_literal(list: &ListArray, element: &Element<'_>, row: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let values = list.values();
    let range = list.value_offsets()[row] as usize..list.value_offsets()[row + 1] as usize;
    out.push(b'{');
    let mut text = String::new();
    for (n, i) in range.enumerate() {
        if n > 0 {
            out.push(b',');
        }
        if values.is_null(i) {
            out.extend_from_slice(b"NULL");
            continue;
        }
        text.clear();
        match element {
            Element::Str(a) => text.push_str(a.value(i)),
            Element::Bin(a) => {
                let mut hexed = Vec::new();
                hex(a.value(i), &mut hexed);
                text.push_str("\\x");
                text.push_str(std::str::from_utf8(&hexed).expect("hex is ASCII"));
            }
            Element::Formatted(f) => write!(text, "{}", f.value(i)).map_err(|e| format!("{e}"))?,
        }
        out.push(b'"');
        for &b in text.as_bytes() {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    }
    out.push(b'}');
    Ok(())
}

fn push_display(out: &mut Vec<u8>, value: impl std::fmt::Display) {
    use std::io::Write as _;
    let _ = write!(out, "{value}");
}

/// NaN and the infinities as PostgreSQL spells them. (A finite float is written by Rust's
/// `Display`: the shortest text that reads back to the same value.)
fn not_finite(value: f64, out: &mut Vec<u8>) {
    if value.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if value > 0.0 {
        out.extend_from_slice(b"Infinity");
    } else {
        out.extend_from_slice(b"-Infinity");
    }
}

/// Text with COPY's escapes: backslash, newline, carriage return and tab.
fn escape(text: &[u8], out: &mut Vec<u8>) {
    if !text.iter().any(|&b| matches!(b, b'\\' | b'\n' | b'\r' | b'\t')) {
        out.extend_from_slice(text);
        return;
    }
    for &b in text {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
}

fn hex(bytes: &[u8], out: &mut Vec<u8>) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 15) as usize]);
    }
}

/// bytea in its hex form, `\x…`, with COPY's backslash doubled.
fn bytea(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b"\\\\x");
    hex(bytes, out);
}

/// The proleptic Gregorian date of a day number counted from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DD`; years before 1 as PostgreSQL writes them (`0044-03-15 BC` is year -43).
/// Returns whether ` BC` must follow the rest of the value.
fn push_date(days: i64, out: &mut Vec<u8>) -> bool {
    let (year, month, day) = civil(days);
    let bc = year <= 0;
    let year = if bc { 1 - year } else { year };
    push_display(out, format_args!("{year:04}-{month:02}-{day:02}"));
    bc
}

fn date(days: i64, out: &mut Vec<u8>) {
    if push_date(days, out) {
        out.extend_from_slice(b" BC");
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+00][ BC]` from microseconds since 1970-01-01.
fn timestamp(micros: i64, utc: bool, out: &mut Vec<u8>) {
    let days = micros.div_euclid(86_400_000_000);
    let in_day = micros.rem_euclid(86_400_000_000);
    let bc = push_date(days, out);
    let (secs, frac) = (in_day / 1_000_000, in_day % 1_000_000);
    push_display(
        out,
        format_args!(" {:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60),
    );
    if frac != 0 {
        push_display(out, format_args!(".{frac:06}"));
    }
    if utc {
        out.extend_from_slice(b"+00");
    }
    if bc {
        out.extend_from_slice(b" BC");
    }
}

/// A column of the given type, for tests.
#[cfg(test)]
fn one(array: ArrayRef, target: Target) -> String {
    let schema = std::sync::Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
        "c",
        array.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(schema, vec![array]).unwrap();
    let sink = [SinkColumn {
        name: "c".into(),
        type_name: "t".into(),
        target,
        required: false,
    }];
    let mut out = Vec::new();
    encode(&batch, &sink, 0, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Date32Array, Int8Array, TimestampMicrosecondArray};

    use super::*;

    #[test]
    fn copy_text_escapes_and_nulls() {
        let strings: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a\tb\nc\\d\re"),
            None,
            Some(""),
            Some("\\N"),
        ]));
        assert_eq!(one(strings, Target::Text), "a\\tb\\nc\\\\d\\re\n\\N\n\n\\\\N\n");
    }

    #[test]
    fn numbers_dates_and_timestamps_as_postgresql_reads_them() {
        let ints: ArrayRef = Arc::new(Int8Array::from(vec![Some(-128), None]));
        assert_eq!(one(ints, Target::Integer), "-128\n\\N\n");
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![0.1, 1.0, f64::NAN, f64::NEG_INFINITY, 1e300]));
        let text = one(floats, Target::Float);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(&lines[..4], &["0.1", "1", "NaN", "-Infinity"]);
        assert_eq!(lines[4].parse::<f64>().unwrap(), 1e300);
        let dates: ArrayRef = Arc::new(Date32Array::from(vec![0, 19_723, -719_162, -735_000]));
        assert_eq!(
            one(dates, Target::Date),
            "1970-01-01\n2024-01-01\n0001-01-01\n0044-08-22 BC\n"
        );
        let ts: ArrayRef =
            Arc::new(TimestampMicrosecondArray::from(vec![1_704_067_200_000_001, -1]).with_timezone("UTC"));
        assert_eq!(
            one(ts, Target::Timestamp),
            "2024-01-01 00:00:00.000001+00\n1969-12-31 23:59:59.999999+00\n"
        );
    }

    #[test]
    fn dictionaries_and_fixed_size_binaries_are_written_by_their_values() {
        let dictionary: ArrayRef = Arc::new(
            [Some("b"), None, Some("a\tb"), Some("b")]
                .into_iter()
                .collect::<arrow::array::DictionaryArray<arrow::datatypes::Int8Type>>(),
        );
        assert_eq!(one(dictionary, Target::Other), "b\n\\N\na\\tb\nb\n");
        let uuids: ArrayRef = Arc::new(FixedSizeBinaryArray::try_from_iter([[0xabu8; 16]].into_iter()).unwrap());
        assert_eq!(one(uuids.clone(), Target::Uuid), format!("{}\n", "ab".repeat(16)));
        assert_eq!(one(uuids, Target::Bytea), format!("\\\\x{}\n", "ab".repeat(16)));
    }

    #[test]
    fn civil_dates_match_the_calendar() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(-1), (1969, 12, 31));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(-719_162), (1, 1, 1));
        assert_eq!(civil(-719_163), (0, 12, 31));
    }
}
