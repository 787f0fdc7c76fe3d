//! PostgreSQL's binary COPY format (`COPY … TO STDOUT (FORMAT binary)`) decoded into Arrow
//! record batches: the source side's hot loop.
//!
//! Which PostgreSQL types map to which Arrow types is decided here ([`arrow_type`]); the
//! mapping is listed in the parent module's documentation.

use std::sync::Arc;

use std::collections::HashMap;

use arrow::array::NullBufferBuilder;
use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Decimal256Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, ListArray, StringBuilder, Time64MicrosecondBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, i256};
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
    /// `numeric` without a precision (or one beyond Arrow's 76 digits): PostgreSQL's
    /// base-10000 digits, written out as the exact decimal text.
    Numeric,
    /// `numeric(p,s)` with p ≤ 38: Arrow's `Decimal128(precision, scale)`.
    Decimal128(u8, i8),
    /// `numeric(p,s)` with 38 < p ≤ 76: `Decimal256(precision, scale)`.
    Decimal256(u8, i8),
    /// `interval`: months, days and microseconds, written out in words (`2 days 3 hours`).
    Interval,
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

/// The Arrow field metadata key that carries a PostgreSQL source column's own type (as a
/// `CREATE TABLE` takes it, e.g. `numeric(10,2)`, `uuid`, `int4[]`): Arrow and Parquet keep
/// it, so `--create-table` gives a table the source's types even through a Parquet file.
pub const POSTGRES_TYPE: &str = "shir.postgres_type";

/// A source column as the reader decodes it.
#[derive(Clone, Debug)]
pub(super) struct SourceColumn {
    pub name: String,
    pub shape: Shape,
    /// Its type for [`POSTGRES_TYPE`]: built-in types only (an enum or a domain may not exist
    /// where the table is created).
    pub sql_type: Option<String>,
}

/// A built-in type as `CREATE TABLE` reads it, with the modifiers that matter for a copy
/// (`numeric(p,s)`, `varchar(n)`, `bpchar(n)`); `None` for types of the database's own.
pub(super) fn sql_type(ty: &Type, typmod: i32) -> Option<String> {
    let (base, brackets) = match ty.kind() {
        Kind::Array(element) => (element, "[]"),
        _ => (ty, ""),
    };
    if base.schema() != "pg_catalog" || matches!(base.kind(), Kind::Array(_) | Kind::Pseudo) {
        return None;
    }
    let modifier = match *base {
        Type::NUMERIC if typmod >= 4 => {
            let packed = typmod - 4;
            format!("({},{})", (packed >> 16) & 0xffff, ((packed & 0x7ff) ^ 1024) - 1024)
        }
        Type::VARCHAR | Type::BPCHAR if typmod >= 4 => format!("({})", typmod - 4),
        _ => String::new(),
    };
    Some(format!("{}{modifier}{brackets}", base.name()))
}

/// A column's shape: one value per row, or a one-dimensional array of values per row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    Scalar(Decode),
    Array(Decode),
}

/// How a column of this type and type modifier (`atttypmod`, -1 for none) is read, or
/// `None` when shir cannot map it. Domains are read as their base type, enums as their
/// labels, arrays of a mapped type as lists of it (the modifier of an array column is its
/// elements').
pub(super) fn shape_for(ty: &Type, typmod: i32) -> Option<Shape> {
    match ty.kind() {
        Kind::Array(element) => decoder_for(element, typmod).map(Shape::Array),
        Kind::Domain(base) if matches!(base.kind(), Kind::Array(_)) => shape_for(base, typmod),
        _ => decoder_for(ty, typmod).map(Shape::Scalar),
    }
}

/// The Arrow precision and scale a `numeric(p,s)` type modifier stands for, or `None`
/// (no modifier, or more digits than Decimal256 holds: the column stays exact text).
/// PostgreSQL 15 allows a scale below zero (`numeric(3,-2)` holds 12300) or above the
/// precision (`numeric(2,4)` holds 0.0012); Parquet allows neither, so such columns get the
/// smallest precision and scale that hold every value exactly.
pub(super) fn numeric_typmod(typmod: i32) -> Option<(u8, i8)> {
    // The modifier is ((precision << 16) | scale) + VARHDRSZ, the scale an 11-bit signed field.
    if typmod < 4 {
        return None;
    }
    let packed = typmod - 4;
    let precision = (packed >> 16) & 0xffff;
    let scale = ((packed & 0x7ff) ^ 1024) - 1024;
    let (precision, scale) = if scale < 0 {
        (precision - scale, 0)
    } else {
        (precision.max(scale), scale)
    };
    (1..=76).contains(&precision).then_some((precision as u8, scale as i8))
}

fn decoder_for(ty: &Type, typmod: i32) -> Option<Decode> {
    let decode = match *ty {
        Type::BOOL => Decode::Bool,
        Type::INT2 => Decode::Int2,
        Type::INT4 => Decode::Int4,
        Type::INT8 => Decode::Int8,
        Type::FLOAT4 => Decode::Float4,
        Type::FLOAT8 => Decode::Float8,
        Type::NUMERIC => match numeric_typmod(typmod) {
            Some((p, s)) if p <= 38 => Decode::Decimal128(p, s),
            Some((p, s)) => Decode::Decimal256(p, s),
            None => Decode::Numeric,
        },
        Type::INTERVAL => Decode::Interval,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::JSON => Decode::Text,
        Type::JSONB => Decode::Jsonb,
        Type::UUID => Decode::Uuid,
        Type::BYTEA => Decode::Bytea,
        Type::DATE => Decode::Date,
        Type::TIME => Decode::Time,
        Type::TIMESTAMP => Decode::Timestamp,
        Type::TIMESTAMPTZ => Decode::TimestampTz,
        _ => match ty.kind() {
            Kind::Domain(base) => return decoder_for(base, typmod),
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
        Decode::Numeric | Decode::Text | Decode::Jsonb | Decode::Uuid | Decode::Interval => DataType::Utf8,
        Decode::Decimal128(p, s) => DataType::Decimal128(p, s),
        Decode::Decimal256(p, s) => DataType::Decimal256(p, s),
        Decode::Bytea => DataType::Binary,
        Decode::Date => DataType::Date32,
        Decode::Time => DataType::Time64(TimeUnit::Microsecond),
        Decode::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        Decode::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
    }
}

/// The Arrow type a column of this shape has: arrays are lists of their elements' type.
pub(super) fn shape_type(shape: Shape) -> DataType {
    match shape {
        Shape::Scalar(decode) => arrow_type(decode),
        Shape::Array(decode) => DataType::List(Arc::new(Field::new_list_field(arrow_type(decode), true))),
    }
}

/// One column being filled.
struct Column {
    name: String,
    shape: Shape,
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
    Dec128(Decimal128Builder),
    Dec256(Decimal256Builder),
    /// An array column: its elements in one child builder, each row's end in `offsets`.
    List {
        values: Box<Builder>,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
    },
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
            Decode::Numeric | Decode::Text | Decode::Jsonb | Decode::Uuid | Decode::Interval => {
                Builder::Str(StringBuilder::new())
            }
            Decode::Decimal128(p, s) => Builder::Dec128(
                Decimal128Builder::new()
                    .with_precision_and_scale(p, s)
                    .expect("numeric_typmod keeps within Arrow's limits"),
            ),
            Decode::Decimal256(p, s) => Builder::Dec256(
                Decimal256Builder::new()
                    .with_precision_and_scale(p, s)
                    .expect("numeric_typmod keeps within Arrow's limits"),
            ),
            Decode::Bytea => Builder::Bin(BinaryBuilder::new()),
            Decode::Date => Builder::Date(Date32Builder::new()),
            Decode::Time => Builder::Time(Time64MicrosecondBuilder::new()),
            Decode::Timestamp => Builder::Ts(TimestampMicrosecondBuilder::new()),
            Decode::TimestampTz => Builder::Ts(TimestampMicrosecondBuilder::new().with_timezone(UTC)),
        }
    }

    fn for_shape(shape: Shape) -> Builder {
        match shape {
            Shape::Scalar(decode) => Builder::new(decode),
            Shape::Array(decode) => Builder::List {
                values: Box::new(Builder::new(decode)),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(0),
            },
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
            Builder::Dec128(b) => b.append_null(),
            Builder::Dec256(b) => b.append_null(),
            Builder::List { offsets, nulls, .. } => {
                offsets.push(*offsets.last().expect("offsets start with 0"));
                nulls.append_null();
            }
        }
    }

    fn finish(&mut self, data_type: &DataType) -> ArrayRef {
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
            Builder::Dec128(b) => Arc::new(b.finish()),
            Builder::Dec256(b) => Arc::new(b.finish()),
            Builder::List { values, offsets, nulls } => {
                let DataType::List(field) = data_type else {
                    unreachable!("a list builder belongs to a list column")
                };
                let values = values.finish(field.data_type());
                let offsets = OffsetBuffer::new(std::mem::replace(offsets, vec![0]).into());
                Arc::new(ListArray::new(field.clone(), offsets, values, nulls.finish()))
            }
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
    /// `columns`: each column as COPY sends them, in order.
    pub(super) fn new(columns: Vec<SourceColumn>, max_rows: usize, max_bytes: usize) -> BatchDecoder {
        let fields: Vec<Field> = columns
            .iter()
            .map(|c| {
                let field = Field::new(&c.name, shape_type(c.shape), true);
                match &c.sql_type {
                    Some(sql) => field.with_metadata(HashMap::from([(POSTGRES_TYPE.to_owned(), sql.clone())])),
                    None => field,
                }
            })
            .collect();
        BatchDecoder {
            schema: Arc::new(Schema::new(fields)),
            columns: columns
                .into_iter()
                .map(|c| Column {
                    name: c.name,
                    shape: c.shape,
                    builder: Builder::for_shape(c.shape),
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
            let decoded = match column.shape {
                Shape::Scalar(decode) => decode_value(&mut column.builder, decode, value, &mut self.scratch),
                Shape::Array(decode) => decode_array(&mut column.builder, decode, value, &mut self.scratch),
            };
            decoded.map_err(|why| {
                let (decode, brackets) = match column.shape {
                    Shape::Scalar(decode) => (decode, ""),
                    Shape::Array(decode) => (decode, "[]"),
                };
                format!(
                    "row {row_number}, column \"{}\" ({}{brackets}): {why}",
                    column.name,
                    type_name(decode)
                )
            })?;
        }
        Ok(())
    }

    fn take_batch(&mut self) -> RecordBatch {
        let arrays: Vec<ArrayRef> = self
            .columns
            .iter_mut()
            .zip(self.schema.fields())
            .map(|(c, field)| c.builder.finish(field.data_type()))
            .collect();
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
        Decode::Numeric | Decode::Decimal128(..) | Decode::Decimal256(..) => "numeric",
        Decode::Interval => "interval",
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

/// A one-dimensional array's elements appended to the list builder as one row: the binary
/// array format is the number of dimensions, a flags word, the element type, each
/// dimension's length and lower bound, then the elements, each with its length (-1: NULL).
fn decode_array(builder: &mut Builder, decode: Decode, value: &[u8], scratch: &mut String) -> Result<(), String> {
    let Builder::List { values, offsets, nulls } = builder else {
        unreachable!("an array column has a list builder")
    };
    let word = |at: usize| -> Result<i32, String> {
        value
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| "an array value cut short".to_owned())
    };
    let dimensions = word(0)?;
    let count = match dimensions {
        // An empty array has no dimensions at all.
        0 => 0,
        1 => word(12)?,
        n => {
            return Err(format!(
                "an array of {n} dimensions; shir copies one-dimensional arrays (cast it in a query, e.g. to text or with array_to_json)"
            ));
        }
    };
    let mut at = 12 + 8 * dimensions as usize;
    let before = offsets.last().copied().expect("offsets start with 0");
    for _ in 0..count.max(0) {
        let len = word(at)?;
        at += 4;
        if len < 0 {
            values.append_null();
            continue;
        }
        let element = value
            .get(at..at + len as usize)
            .ok_or_else(|| "an array element cut short".to_owned())?;
        at += len as usize;
        decode_value(values, decode, element, scratch)?;
    }
    if at != value.len() {
        return Err("bytes after an array's last element".to_owned());
    }
    let end = before
        .checked_add(count.max(0))
        .ok_or("more array elements in one batch than Arrow's 32-bit list offsets hold")?;
    offsets.push(end);
    nulls.append_non_null();
    Ok(())
}

fn decode_value(builder: &mut Builder, decode: Decode, value: &[u8], scratch: &mut String) -> Result<(), String> {
    match (builder, decode) {
        (Builder::Bool(b), _) => b.append_value(fixed::<1>(value)?[0] != 0),
        (Builder::I16(b), _) => b.append_value(i16::from_be_bytes(fixed(value)?)),
        (Builder::I32(b), _) => b.append_value(i32::from_be_bytes(fixed(value)?)),
        (Builder::I64(b), _) => b.append_value(i64::from_be_bytes(fixed(value)?)),
        (Builder::F32(b), _) => b.append_value(f32::from_be_bytes(fixed(value)?)),
        (Builder::F64(b), _) => b.append_value(f64::from_be_bytes(fixed(value)?)),
        (Builder::Dec128(b), Decode::Decimal128(p, s)) => {
            let unscaled = numeric_unscaled(value, p, s)?;
            b.append_value(unscaled.to_i128().expect("38 digits fit in an i128"));
        }
        (Builder::Dec256(b), Decode::Decimal256(p, s)) => b.append_value(numeric_unscaled(value, p, s)?),
        (Builder::Str(b), Decode::Interval) => {
            scratch.clear();
            interval_text(value, scratch)?;
            b.append_value(scratch.as_str());
        }
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
        (Builder::Dec128(_) | Builder::Dec256(_) | Builder::List { .. }, _) => {
            unreachable!("a column's builder is made for its decoder")
        }
    }
    Ok(())
}

/// A binary `numeric` value, its header checked: what both readers of it start from.
enum Numeric<'a> {
    /// `NaN`, `Infinity` or `-Infinity`, as PostgreSQL prints them.
    Special(&'static str),
    Finite(FiniteNumeric<'a>),
}

struct FiniteNumeric<'a> {
    negative: bool,
    /// The first digit is worth 10000^weight.
    weight: i64,
    /// Digits after the point that PostgreSQL prints.
    dscale: i64,
    ndigits: usize,
    /// The base-10000 digits, two bytes each, big-endian; each checked to be at most 9999.
    digits: &'a [u8],
}

impl FiniteNumeric<'_> {
    /// Digit `i` (0 is the first), and 0 outside the stored ones.
    fn digit(&self, i: i64) -> u16 {
        if i >= 0 && (i as usize) < self.ndigits {
            let at = 2 * i as usize;
            u16::from_be_bytes([self.digits[at], self.digits[at + 1]])
        } else {
            0
        }
    }
}

impl Numeric<'_> {
    fn read(value: &[u8]) -> Result<Numeric<'_>, String> {
        const NEGATIVE: u16 = 0x4000;
        if value.len() < 8 {
            return Err("a numeric shorter than its header".to_owned());
        }
        let word = |i: usize| u16::from_be_bytes([value[2 * i], value[2 * i + 1]]);
        let ndigits = word(0) as usize;
        if value.len() != 8 + 2 * ndigits {
            return Err(format!("a numeric of {} bytes for {ndigits} digits", value.len()));
        }
        let special = match word(2) {
            0xC000 => "NaN",
            0xD000 => "Infinity",
            0xF000 => "-Infinity",
            0 | NEGATIVE => {
                let n = FiniteNumeric {
                    negative: word(2) == NEGATIVE,
                    weight: word(1) as i16 as i64,
                    dscale: word(3) as i64,
                    ndigits,
                    digits: &value[8..],
                };
                if (0..ndigits).any(|i| n.digit(i as i64) > 9999) {
                    return Err("a numeric digit above 9999".to_owned());
                }
                return Ok(Numeric::Finite(n));
            }
            other => return Err(format!("a numeric with sign word {other:#06x}")),
        };
        Ok(Numeric::Special(special))
    }
}

/// A binary `numeric` as the unscaled integer of a decimal of this precision and scale
/// (`12.30` at scale 2 is 1230). A value that does not fit, or `NaN` and the infinities,
/// which no decimal holds, are errors: nothing is rounded or replaced.
pub(super) fn numeric_unscaled(value: &[u8], precision: u8, scale: i8) -> Result<i256, String> {
    let n = match Numeric::read(value)? {
        Numeric::Special(special) => {
            return Err(format!(
                "'{special}' has no decimal equivalent (replace it in a query, e.g. NULLIF(column, 'NaN'), or cast the column to text)"
            ));
        }
        Numeric::Finite(n) => n,
    };
    let (ndigits, weight) = (n.ndigits, n.weight);
    let ten = i256::from_i128(10);
    let overflow = || format!("a value with more than {precision} digits (precision {precision}, scale {scale})");
    // The digits as one integer, then shifted to the scale: its last digit is worth
    // 10000^(weight - ndigits + 1).
    let mut unscaled = i256::ZERO;
    for i in 0..ndigits {
        let digit = n.digit(i as i64);
        unscaled = unscaled
            .checked_mul(i256::from_i128(10_000))
            .and_then(|u| u.checked_add(i256::from_i128(digit as i128)))
            .ok_or_else(overflow)?;
    }
    let shift = 4 * (weight - ndigits as i64 + 1) + scale as i64;
    if unscaled != i256::ZERO {
        if shift >= 0 {
            let factor = ten.checked_pow(shift as u32).ok_or_else(overflow)?;
            unscaled = unscaled.checked_mul(factor).ok_or_else(overflow)?;
        } else {
            let divisor = ten.checked_pow((-shift) as u32).ok_or_else(overflow)?;
            let (quotient, remainder) = unscaled.checked_div_rem(divisor).ok_or_else(overflow)?;
            if remainder != i256::ZERO {
                return Err(format!("a value with more than {scale} decimal places"));
            }
            unscaled = quotient;
        }
    }
    let limit = ten.checked_pow(precision as u32).expect("10^76 fits in an i256");
    if unscaled >= limit {
        return Err(overflow());
    }
    Ok(if n.negative { unscaled.wrapping_neg() } else { unscaled })
}

/// A binary `interval` (microseconds, days, months) as words, each part with its own
/// sign: `1 year 2 months -3 days 4 hours 5 minutes 6.5 seconds`, zero as `0 seconds`.
/// PostgreSQL reads that back exactly, and so does DuckDB's `::INTERVAL`, which reads
/// neither ISO 8601 nor PostgreSQL's own output when its parts' signs differ (`+3 days`).
pub(super) fn interval_text(value: &[u8], out: &mut String) -> Result<(), String> {
    use std::fmt::Write as _;
    let raw: [u8; 16] = fixed(value)?;
    let micros = i64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
    let days = i32::from_be_bytes(raw[8..12].try_into().expect("4 bytes"));
    let months = i32::from_be_bytes(raw[12..].try_into().expect("4 bytes"));
    let (hours, rest) = (micros / 3_600_000_000, micros % 3_600_000_000);
    let (minutes, rest) = (rest / 60_000_000, rest % 60_000_000);
    let parts = [
        (i64::from(months / 12), "year"),
        (i64::from(months % 12), "month"),
        (i64::from(days), "day"),
        (hours, "hour"),
        (minutes, "minute"),
    ];
    for (n, unit) in parts {
        if n != 0 {
            let plural = if n.abs() == 1 { "" } else { "s" };
            let space = if out.is_empty() { "" } else { " " };
            let _ = write!(out, "{space}{n} {unit}{plural}");
        }
    }
    if rest != 0 || out.is_empty() {
        let space = if out.is_empty() { "" } else { " " };
        let sign = if rest < 0 { "-" } else { "" };
        let (secs, frac) = (rest.unsigned_abs() / 1_000_000, rest.unsigned_abs() % 1_000_000);
        let _ = write!(out, "{space}{sign}{secs}");
        if frac != 0 {
            let digits = format!("{frac:06}");
            let _ = write!(out, ".{}", digits.trim_end_matches('0'));
        }
        let plural = if rest.unsigned_abs() == 1_000_000 { "" } else { "s" };
        let _ = write!(out, " second{plural}");
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
    let n = match Numeric::read(value)? {
        Numeric::Special(special) => {
            out.push_str(special);
            return Ok(());
        }
        Numeric::Finite(n) => n,
    };
    let (weight, dscale) = (n.weight, n.dscale);
    if n.negative {
        out.push('-');
    }
    if weight < 0 {
        out.push('0');
    } else {
        for i in 0..=weight {
            let four = four_digits(n.digit(i));
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
            four_digits(n.digit(i))[..take]
                .iter()
                .for_each(|&c| out.push(c as char));
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

    fn raw_numeric(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut raw = Vec::new();
        for w in [digits.len() as u16, weight as u16, sign, dscale].iter().chain(digits) {
            raw.extend_from_slice(&w.to_be_bytes());
        }
        raw
    }

    #[test]
    fn numeric_type_modifiers_give_precision_and_scale() {
        let typmod = |p: i32, s: i32| ((p << 16) | (s & 0x7ff)) + 4;
        assert_eq!(numeric_typmod(-1), None);
        assert_eq!(numeric_typmod(typmod(10, 2)), Some((10, 2)));
        assert_eq!(numeric_typmod(typmod(40, 5)), Some((40, 5)));
        assert_eq!(numeric_typmod(typmod(76, 0)), Some((76, 0)));
        assert_eq!(numeric_typmod(typmod(77, 0)), None, "beyond Decimal256: text");
        assert_eq!(numeric_typmod(typmod(3, -2)), Some((5, 0)), "numeric(3,-2) holds 99900");
        assert_eq!(numeric_typmod(typmod(2, 4)), Some((4, 4)), "numeric(2,4) holds 0.0099");
    }

    #[test]
    fn numeric_binary_becomes_the_exact_unscaled_decimal() {
        let at = |raw: Vec<u8>, p: u8, s: i8| numeric_unscaled(&raw, p, s).map(|v| v.to_string());
        // 12.34 at scale 2 and at scale 5.
        assert_eq!(at(raw_numeric(0, 0, 2, &[12, 3400]), 10, 2).unwrap(), "1234");
        assert_eq!(at(raw_numeric(0, 0x4000, 2, &[12, 3400]), 10, 5).unwrap(), "-1234000");
        // 0.0005 and 10000 and zero.
        assert_eq!(at(raw_numeric(-1, 0, 4, &[5]), 10, 4).unwrap(), "5");
        assert_eq!(at(raw_numeric(1, 0, 0, &[1]), 10, 0).unwrap(), "10000");
        assert_eq!(at(raw_numeric(0, 0, 2, &[]), 10, 2).unwrap(), "0");
        // 35 nines before the point and five after: needs Decimal256.
        let mut digits = vec![999; 1];
        digits.extend([9999; 8]);
        digits.extend([9999, 9000]);
        let big = at(raw_numeric(8, 0, 5, &digits), 40, 5).unwrap();
        assert_eq!(big, format!("{}{}", "9".repeat(35), "99999"));
        // Too many digits, too many places, and the values no decimal holds: errors.
        assert!(
            at(raw_numeric(1, 0, 0, &[1]), 4, 0)
                .unwrap_err()
                .contains("more than 4 digits")
        );
        assert!(
            at(raw_numeric(-1, 0, 4, &[5]), 10, 2)
                .unwrap_err()
                .contains("decimal places")
        );
        for (sign, name) in [(0xC000, "'NaN'"), (0xD000, "'Infinity'"), (0xF000, "'-Infinity'")] {
            let err = at(raw_numeric(0, sign, 0, &[]), 10, 2).unwrap_err();
            assert!(err.starts_with(name) && err.contains("no decimal equivalent"), "{err}");
        }
    }

    #[test]
    fn intervals_are_written_in_words_with_a_sign_on_each_part() {
        let text = |micros: i64, days: i32, months: i32| {
            let mut raw = micros.to_be_bytes().to_vec();
            raw.extend_from_slice(&days.to_be_bytes());
            raw.extend_from_slice(&months.to_be_bytes());
            let mut out = String::new();
            interval_text(&raw, &mut out).unwrap();
            out
        };
        assert_eq!(text(0, 0, 0), "0 seconds");
        assert_eq!(text(0, 3, 14), "1 year 2 months 3 days");
        assert_eq!(
            text(4 * 3_600_000_000 + 5 * 60_000_000 + 6_500_000, 0, 0),
            "4 hours 5 minutes 6.5 seconds"
        );
        assert_eq!(text(-1, -1, -1), "-1 month -1 day -0.000001 seconds");
        assert_eq!(
            text(-(3_600_000_000 + 1_000_000), 2, -25),
            "-2 years -1 month 2 days -1 hour -1 second"
        );
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

    fn columns() -> Vec<SourceColumn> {
        [("n", Decode::Int4), ("a", Decode::Text), ("b", Decode::Text)]
            .into_iter()
            .map(|(name, decode)| SourceColumn {
                name: name.into(),
                shape: Shape::Scalar(decode),
                sql_type: None,
            })
            .collect()
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
