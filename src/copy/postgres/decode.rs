//! PostgreSQL's binary COPY format (`COPY … TO STDOUT (FORMAT binary)`) decoded into Arrow
//! record batches: the source side's hot loop.
//!
//! Which PostgreSQL types map to which Arrow types is decided here ([`arrow_type`]); the
//! mapping is listed in the parent module's documentation.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, StringBuilder, Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use bytes::BytesMut;
use tokio_postgres::types::{Kind, Type};

/// The signature every binary COPY stream starts with.
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Microseconds from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
const EPOCH_SHIFT_MICROS: i64 = 946_684_800_000_000;

/// Days from 1970-01-01 to 2000-01-01.
const EPOCH_SHIFT_DAYS: i32 = 10_957;

/// The time zone Arrow timestamps of `timestamptz` columns carry: PostgreSQL stores
/// instants, and sends them as UTC. Written as an offset, not as the name `UTC`: arrow
/// built without its `chrono-tz` feature (as shir builds it) cannot format or cast
/// timestamps in a named zone, so a CSV or JSON writer would fail on them.
pub(super) const UTC: &str = "+00:00";

/// How a column's values are decoded; several PostgreSQL types share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Decode {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// `numeric`: PostgreSQL's base-10000 digits, written out as the exact decimal text.
    Numeric,
    /// `text`, `varchar`, `bpchar`, `name`, `json`, enums: UTF-8 text as it is.
    Text,
    /// `jsonb`: a version byte (1), then the JSON text.
    Jsonb,
    /// `uuid`: 16 bytes, written as the usual hyphenated lowercase hex.
    Uuid,
    Bytea,
    Date,
    Time,
    Timestamp,
    TimestampTz,
}

/// How a PostgreSQL type is read, or `None` when shir cannot map it. Domains are read as
/// their base type, enums as their labels.
pub(super) fn decoder_for(ty: &Type) -> Option<Decode> {
    let decode = match *ty {
        Type::BOOL => Decode::Bool,
        Type::INT2 => Decode::Int2,
        Type::INT4 => Decode::Int4,
        Type::INT8 => Decode::Int8,
        Type::FLOAT4 => Decode::Float4,
        Type::FLOAT8 => Decode::Float8,
        Type::NUMERIC => Decode::Numeric,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON => Decode::Text,
        Type::JSONB => Decode::Jsonb,
        Type::UUID => Decode::Uuid,
        Type::BYTEA => Decode::Bytea,
        Type::DATE => Decode::Date,
        Type::TIME => Decode::Time,
        Type::TIMESTAMP => Decode::Timestamp,
        Type::TIMESTAMPTZ => Decode::TimestampTz,
        _ => match ty.kind() {
            Kind::Domain(base) => return decoder_for(base),
            Kind::Enum(_) => Decode::Text,
            _ => return None,
        },
    };
    Some(decode)
}

/// The Arrow type a decoded column has.
pub(super) fn arrow_type(decode: Decode) -> DataType {
    match decode {
        Decode::Bool => DataType::Boolean,
        Decode::Int2 => DataType::Int16,
        Decode::Int4 => DataType::Int32,
        Decode::Int8 => DataType::Int64,
        Decode::Float4 => DataType::Float32,
        Decode::Float8 => DataType::Float64,
        Decode::Numeric | Decode::Text | Decode::Jsonb | Decode::Uuid => DataType::Utf8,
        Decode::Bytea => DataType::Binary,
        Decode::Date => DataType::Date32,
        Decode::Time => DataType::Time64(TimeUnit::Microsecond),
        Decode::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        Decode::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
    }
}

/// One column being filled.
struct Column {
    name: String,
    decode: Decode,
    builder: Builder,
}

enum Builder {
    Bool(BooleanBuilder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Str(StringBuilder),
    Bin(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Ts(TimestampMicrosecondBuilder),
}

impl Builder {
    fn new(decode: Decode) -> Builder {
        match decode {
            Decode::Bool => Builder::Bool(BooleanBuilder::new()),
            Decode::Int2 => Builder::I16(Int16Builder::new()),
            Decode::Int4 => Builder::I32(Int32Builder::new()),
            Decode::Int8 => Builder::I64(Int64Builder::new()),
            Decode::Float4 => Builder::F32(Float32Builder::new()),
            Decode::Float8 => Builder::F64(Float64Builder::new()),
            Decode::Numeric | Decode::Text | Decode::Jsonb | Decode::Uuid => Builder::Str(StringBuilder::new()),
            Decode::Bytea => Builder::Bin(BinaryBuilder::new()),
            Decode::Date => Builder::Date(Date32Builder::new()),
            Decode::Time => Builder::Time(Time64MicrosecondBuilder::new()),
            Decode::Timestamp => Builder::Ts(TimestampMicrosecondBuilder::new()),
            Decode::TimestampTz => Builder::Ts(TimestampMicrosecondBuilder::new().with_timezone(UTC)),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Bool(b) => b.append_null(),
            Builder::I16(b) => b.append_null(),
            Builder::I32(b) => b.append_null(),
            Builder::I64(b) => b.append_null(),
            Builder::F32(b) => b.append_null(),
            Builder::F64(b) => b.append_null(),
            Builder::Str(b) => b.append_null(),
            Builder::Bin(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Time(b) => b.append_null(),
            Builder::Ts(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::I16(b) => Arc::new(b.finish()),
            Builder::I32(b) => Arc::new(b.finish()),
            Builder::I64(b) => Arc::new(b.finish()),
            Builder::F32(b) => Arc::new(b.finish()),
            Builder::F64(b) => Arc::new(b.finish()),
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::Bin(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Time(b) => Arc::new(b.finish()),
            Builder::Ts(b) => Arc::new(b.finish()),
        }
    }
}

/// Turns the bytes of a binary COPY stream, in chunks of any size, into record batches of
/// at most `max_rows` rows (or about `max_bytes` of COPY data, whichever comes first).
pub(super) struct BatchDecoder {
    schema: SchemaRef,
    columns: Vec<Column>,
    /// Bytes of a row (or of the header) not complete yet.
    pending: BytesMut,
    header_done: bool,
    trailer_seen: bool,
    max_rows: usize,
    max_bytes: usize,
    rows_in_batch: usize,
    bytes_in_batch: usize,
    /// Rows decoded so far, for messages ("row 1234").
    rows_total: u64,
    /// Reused for numeric and uuid text.
    scratch: String,
}

impl BatchDecoder {
    /// `columns`: each column's name and decoder, in the order COPY sends them.
    pub(super) fn new(columns: Vec<(String, Decode)>, max_rows: usize, max_bytes: usize) -> BatchDecoder {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(name, decode)| Field::new(name, arrow_type(*decode), true))
            .collect();
        BatchDecoder {
            schema: Arc::new(Schema::new(fields)),
            columns: columns
                .into_iter()
                .map(|(name, decode)| Column {
                    name,
                    decode,
                    builder: Builder::new(decode),
                })
                .collect(),
            pending: BytesMut::new(),
            header_done: false,
            trailer_seen: false,
            max_rows: max_rows.max(1),
            max_bytes,
            rows_in_batch: 0,
            bytes_in_batch: 0,
            rows_total: 0,
            scratch: String::new(),
        }
    }

    /// Decodes what `chunk` completes; full batches are pushed to `out`.
    pub(super) fn feed(&mut self, chunk: &[u8], out: &mut Vec<RecordBatch>) -> Result<(), String> {
        if self.pending.is_empty() {
            // The common case: PostgreSQL sends each row in a message of its own, so a chunk
            // usually holds whole rows and needs no copying.
            let used = self.decode_from(chunk, out)?;
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            self.pending.extend_from_slice(chunk);
            let pending = std::mem::take(&mut self.pending);
            let used = self.decode_from(&pending, out);
            self.pending = pending;
            let _ = self.pending.split_to(used?);
        }
        Ok(())
    }

    /// The stream has ended: the last, partial batch (if any rows are left). An error if
    /// the stream stopped before its trailer.
    pub(super) fn finish(&mut self) -> Result<Option<RecordBatch>, String> {
        if !self.trailer_seen {
            return Err(format!(
                "the COPY stream ended after {} rows without its end marker",
                self.rows_total
            ));
        }
        Ok((self.rows_in_batch > 0).then(|| self.take_batch()))
    }

    /// An empty batch with the columns, for a source without rows (a sink still needs to
    /// know the columns, a CSV file its header).
    pub(super) fn empty_batch(&self) -> RecordBatch {
        RecordBatch::new_empty(self.schema.clone())
    }

    /// Decodes complete rows from the start of `data`; returns how many bytes were used.
    fn decode_from(&mut self, data: &[u8], out: &mut Vec<RecordBatch>) -> Result<usize, String> {
        let mut at = 0;
        if !self.header_done {
            match header_len(data)? {
                Some(len) => {
                    at = len;
                    self.header_done = true;
                }
                None => return Ok(0),
            }
        }
        while !self.trailer_seen {
            let rest = &data[at..];
            let Some(len) = self.row_len(rest)? else { break };
            if len == 2 {
                // A field count of -1: the trailer.
                self.trailer_seen = true;
                at += 2;
                break;
            }
            self.decode_row(&rest[..len])?;
            at += len;
            self.rows_in_batch += 1;
            self.rows_total += 1;
            self.bytes_in_batch += len;
            if self.rows_in_batch >= self.max_rows || self.bytes_in_batch >= self.max_bytes {
                out.push(self.take_batch());
            }
        }
        if self.trailer_seen && at < data.len() {
            return Err("bytes after the COPY stream's end marker".to_owned());
        }
        Ok(at)
    }

    /// The length of the row at the start of `data` if it is all there (2 for the trailer).
    fn row_len(&self, data: &[u8]) -> Result<Option<usize>, String> {
        let Some(count) = data.get(..2) else { return Ok(None) };
        let count = i16::from_be_bytes([count[0], count[1]]);
        if count == -1 {
            return Ok(Some(2));
        }
        if count as usize != self.columns.len() {
            return Err(format!(
                "row {} has {count} fields, the query {} columns",
                self.rows_total + 1,
                self.columns.len()
            ));
        }
        let mut at = 2;
        for _ in 0..count {
            let Some(len) = data.get(at..at + 4) else {
                return Ok(None);
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            at += 4;
            if len >= 0 {
                at += len as usize;
            } else if len != -1 {
                return Err(format!("row {}: a field of length {len}", self.rows_total + 1));
            }
        }
        Ok((at <= data.len()).then_some(at))
    }

    /// Appends one complete row (as `row_len` measured it) to the builders.
    fn decode_row(&mut self, row: &[u8]) -> Result<(), String> {
        let mut at = 2;
        let row_number = self.rows_total + 1;
        for column in &mut self.columns {
            let len = i32::from_be_bytes([row[at], row[at + 1], row[at + 2], row[at + 3]]);
            at += 4;
            if len < 0 {
                column.builder.append_null();
                continue;
            }
            let value = &row[at..at + len as usize];
            at += len as usize;
            decode_value(column, value, &mut self.scratch).map_err(|why| {
                format!(
                    "row {row_number}, column \"{}\" ({}): {why}",
                    column.name,
                    type_name(column.decode)
                )
            })?;
        }
        Ok(())
    }

    fn take_batch(&mut self) -> RecordBatch {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(|c| c.builder.finish()).collect();
        self.rows_in_batch = 0;
        self.bytes_in_batch = 0;
        RecordBatch::try_new(self.schema.clone(), arrays).expect("builders match the schema")
    }
}

/// The header's length if it is all there: signature, flags, extension area.
fn header_len(data: &[u8]) -> Result<Option<usize>, String> {
    if data.len() < SIGNATURE.len() + 8 {
        return Ok(None);
    }
    if &data[..SIGNATURE.len()] != SIGNATURE {
        return Err("the server's COPY output is not in the binary format".to_owned());
    }
    let at = SIGNATURE.len();
    let flags = u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    if flags & (1 << 16) != 0 {
        return Err("the COPY output carries OIDs, which shir does not read".to_owned());
    }
    let extension = u32::from_be_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]) as usize;
    let len = at + 8 + extension;
    Ok((data.len() >= len).then_some(len))
}

fn type_name(decode: Decode) -> &'static str {
    match decode {
        Decode::Bool => "boolean",
        Decode::Int2 => "smallint",
        Decode::Int4 => "integer",
        Decode::Int8 => "bigint",
        Decode::Float4 => "real",
        Decode::Float8 => "double precision",
        Decode::Numeric => "numeric",
        Decode::Text => "text",
        Decode::Jsonb => "jsonb",
        Decode::Uuid => "uuid",
        Decode::Bytea => "bytea",
        Decode::Date => "date",
        Decode::Time => "time",
        Decode::Timestamp => "timestamp",
        Decode::TimestampTz => "timestamptz",
    }
}

fn fixed<const N: usize>(value: &[u8]) -> Result<[u8; N], String> {
    value
        .try_into()
        .map_err(|_| format!("{} bytes where {N} were expected", value.len()))
}

fn text(value: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(value).map_err(|e| format!("not UTF-8 ({e})"))
}

fn decode_value(column: &mut Column, value: &[u8], scratch: &mut String) -> Result<(), String> {
    match (&mut column.builder, column.decode) {
        (Builder::Bool(b), _) => b.append_value(fixed::<1>(value)?[0] != 0),
        (Builder::I16(b), _) => b.append_value(i16::from_be_bytes(fixed(value)?)),
        (Builder::I32(b), _) => b.append_value(i32::from_be_bytes(fixed(value)?)),
        (Builder::I64(b), _) => b.append_value(i64::from_be_bytes(fixed(value)?)),
        (Builder::F32(b), _) => b.append_value(f32::from_be_bytes(fixed(value)?)),
        (Builder::F64(b), _) => b.append_value(f64::from_be_bytes(fixed(value)?)),
        (Builder::Str(b), Decode::Numeric) => {
            scratch.clear();
            numeric_text(value, scratch)?;
            b.append_value(scratch.as_str());
        }
        (Builder::Str(b), Decode::Uuid) => {
            let raw: [u8; 16] = fixed(value)?;
            const HEX: &[u8; 16] = b"0123456789abcdef";
            scratch.clear();
            for (i, byte) in raw.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    scratch.push('-');
                }
                scratch.push(HEX[(byte >> 4) as usize] as char);
                scratch.push(HEX[(byte & 15) as usize] as char);
            }
            b.append_value(scratch.as_str());
        }
        (Builder::Str(b), Decode::Jsonb) => match value.split_first() {
            Some((1, json)) => b.append_value(text(json)?),
            Some((version, _)) => return Err(format!("jsonb format version {version}, shir reads version 1")),
            None => return Err("an empty jsonb value".to_owned()),
        },
        (Builder::Str(b), _) => b.append_value(text(value)?),
        (Builder::Bin(b), _) => b.append_value(value),
        (Builder::Date(b), _) => {
            let days = i32::from_be_bytes(fixed(value)?);
            if days == i32::MAX || days == i32::MIN {
                return Err(infinite(days == i32::MAX));
            }
            let days = days
                .checked_add(EPOCH_SHIFT_DAYS)
                .ok_or("a date outside Arrow's range")?;
            b.append_value(days);
        }
        (Builder::Time(b), _) => b.append_value(i64::from_be_bytes(fixed(value)?)),
        (Builder::Ts(b), _) => {
            let micros = i64::from_be_bytes(fixed(value)?);
            if micros == i64::MAX || micros == i64::MIN {
                return Err(infinite(micros == i64::MAX));
            }
            let micros = micros
                .checked_add(EPOCH_SHIFT_MICROS)
                .ok_or("a timestamp outside Arrow's range")?;
            b.append_value(micros);
        }
    }
    Ok(())
}

fn infinite(positive: bool) -> String {
    let which = if positive { "infinity" } else { "-infinity" };
    format!("'{which}' has no Arrow equivalent (replace it in a query, e.g. with NULL)")
}

/// Writes a binary `numeric` as PostgreSQL's own text output would: sign, integer digits,
/// and exactly `dscale` fractional digits; `NaN`, `Infinity`, `-Infinity` as such.
pub(super) fn numeric_text(value: &[u8], out: &mut String) -> Result<(), String> {
    const NEGATIVE: u16 = 0x4000;
    const NAN: u16 = 0xC000;
    const PLUS_INFINITY: u16 = 0xD000;
    const MINUS_INFINITY: u16 = 0xF000;

    if value.len() < 8 {
        return Err("a numeric shorter than its header".to_owned());
    }
    let word = |i: usize| u16::from_be_bytes([value[2 * i], value[2 * i + 1]]);
    let ndigits = word(0) as usize;
    let weight = word(1) as i16 as i64;
    let sign = word(2);
    let dscale = word(3) as i64;
    if value.len() != 8 + 2 * ndigits {
        return Err(format!("a numeric of {} bytes for {ndigits} digits", value.len()));
    }
    match sign {
        NAN => {
            out.push_str("NaN");
            return Ok(());
        }
        PLUS_INFINITY => {
            out.push_str("Infinity");
            return Ok(());
        }
        MINUS_INFINITY => {
            out.push_str("-Infinity");
            return Ok(());
        }
        0 | NEGATIVE => {}
        other => return Err(format!("a numeric with sign word {other:#06x}")),
    }
    // Each digit is 0..=9999, the first worth 10000^weight.
    let digit = |i: i64| -> u16 {
        if i >= 0 && (i as usize) < ndigits {
            word(4 + i as usize)
        } else {
            0
        }
    };
    if sign == NEGATIVE {
        out.push('-');
    }
    if (0..ndigits).any(|i| word(4 + i) > 9999) {
        return Err("a numeric digit above 9999".to_owned());
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            let four = four_digits(digit(i));
            // The first group without its leading zeros.
            let skip = if i == 0 {
                four.iter().take(3).take_while(|&&c| c == b'0').count()
            } else {
                0
            };
            four[skip..].iter().for_each(|&c| out.push(c as char));
        }
    }
    if dscale > 0 {
        out.push('.');
        let mut left = dscale;
        let mut i = weight + 1;
        while left > 0 {
            let take = left.min(4) as usize;
            four_digits(digit(i))[..take].iter().for_each(|&c| out.push(c as char));
            left -= take as i64;
            i += 1;
        }
    }
    Ok(())
}

/// A base-10000 digit as four ASCII decimal digits.
fn four_digits(d: u16) -> [u8; 4] {
    [
        b'0' + (d / 1000) as u8,
        b'0' + (d / 100 % 10) as u8,
        b'0' + (d / 10 % 10) as u8,
        b'0' + (d % 10) as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> String {
        let mut raw = Vec::new();
        for w in [ndigits, weight as u16, sign, dscale].iter().chain(digits) {
            raw.extend_from_slice(&w.to_be_bytes());
        }
        let mut out = String::new();
        numeric_text(&raw, &mut out).unwrap();
        out
    }

    #[test]
    fn numeric_binary_is_written_as_postgresql_prints_it() {
        assert_eq!(numeric(0, 0, 0, 0, &[]), "0");
        assert_eq!(numeric(0, 0, 0, 2, &[]), "0.00");
        assert_eq!(numeric(1, 0, 0, 0, &[42]), "42");
        assert_eq!(numeric(2, 1, 0, 0, &[1, 0]), "10000");
        assert_eq!(numeric(2, 0, 0x4000, 2, &[12, 3400]), "-12.34");
        assert_eq!(numeric(1, -1, 0, 4, &[5]), "0.0005");
        assert_eq!(numeric(1, -2, 0, 8, &[5]), "0.00000005");
        assert_eq!(numeric(1, -1, 0, 2, &[1200]), "0.12");
        assert_eq!(numeric(0, 0, 0xC000, 0, &[]), "NaN");
        assert_eq!(numeric(0, 0, 0xD000, 0, &[]), "Infinity");
        assert_eq!(numeric(0, 0, 0xF000, 0, &[]), "-Infinity");
    }

    /// The header, one row of (int4 7, NULL text, text "é"), the trailer.
    fn stream() -> Vec<u8> {
        let mut data = SIGNATURE.to_vec();
        data.extend_from_slice(&0u32.to_be_bytes());
        data.extend_from_slice(&0u32.to_be_bytes());
        data.extend_from_slice(&3i16.to_be_bytes());
        data.extend_from_slice(&4i32.to_be_bytes());
        data.extend_from_slice(&7i32.to_be_bytes());
        data.extend_from_slice(&(-1i32).to_be_bytes());
        data.extend_from_slice(&2i32.to_be_bytes());
        data.extend_from_slice("é".as_bytes());
        data.extend_from_slice(&(-1i16).to_be_bytes());
        data
    }

    fn columns() -> Vec<(String, Decode)> {
        vec![
            ("n".into(), Decode::Int4),
            ("a".into(), Decode::Text),
            ("b".into(), Decode::Text),
        ]
    }

    #[test]
    fn binary_copy_is_decoded_whatever_the_chunk_boundaries() {
        let data = stream();
        for size in [1, 2, 3, 7, 19, data.len()] {
            let mut decoder = BatchDecoder::new(columns(), 8192, 1 << 20);
            let mut out = Vec::new();
            for chunk in data.chunks(size) {
                decoder.feed(chunk, &mut out).unwrap();
            }
            assert!(out.is_empty());
            let batch = decoder.finish().unwrap().unwrap();
            assert_eq!(batch.num_rows(), 1, "chunks of {size}");
            let n = batch
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int32Array>()
                .unwrap();
            assert_eq!(n.value(0), 7);
            assert!(batch.column(1).is_null(0));
            let b = batch
                .column(2)
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            assert_eq!(b.value(0), "é");
        }
    }

    #[test]
    fn a_truncated_copy_stream_is_an_error() {
        let data = stream();
        let mut decoder = BatchDecoder::new(columns(), 8192, 1 << 20);
        decoder.feed(&data[..data.len() - 2], &mut Vec::new()).unwrap();
        let err = decoder.finish().unwrap_err();
        assert!(err.contains("without its end marker"), "{err}");
    }
}
