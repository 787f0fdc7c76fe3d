//! `--create-table`: the `CREATE TABLE` statement for a missing sink table, its columns
//! named and typed after the source's Arrow schema.
//!
//! A column read from PostgreSQL carries its own type in its field metadata
//! ([`POSTGRES_TYPE`], kept by Arrow and by the Parquet files shir writes), so a `uuid`,
//! `jsonb`, `interval` or unconstrained `numeric` column, which travels as text, becomes a
//! column of that type again. Metadata can come from a file someone else wrote, so it is
//! used only when it reads as one of the built-in types below; anything else is typed from
//! the Arrow type alone.

use arrow::datatypes::{DataType, Field, Schema};

use super::decode::POSTGRES_TYPE;
use crate::job_spec::names::quote_ident;

/// Built-in types a column's metadata may name, as [`super::decode::sql_type`] writes them.
const KNOWN: &[&str] = &[
    "bool",
    "int2",
    "int4",
    "int8",
    "float4",
    "float8",
    "numeric",
    "text",
    "varchar",
    "bpchar",
    "name",
    "json",
    "jsonb",
    "uuid",
    "bytea",
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    "interval",
];

/// The metadata's type if it is a known type, with at most a `(n)` or `(p,s)` modifier of
/// digits and a trailing `[]`: nothing that could be read as more SQL.
fn declared(field: &Field) -> Option<&str> {
    let text = field.metadata().get(POSTGRES_TYPE)?.as_str();
    let bare = text.strip_suffix("[]").unwrap_or(text);
    let (base, modifier) = match bare.split_once('(') {
        Some((base, rest)) => (base, Some(rest.strip_suffix(')')?)),
        None => (bare, None),
    };
    let modifier_ok = modifier.is_none_or(|m| {
        let parts: Vec<&str> = m.split(',').collect();
        parts.len() <= 2
            && parts.iter().all(|p| {
                let digits = p.strip_prefix('-').unwrap_or(p);
                !digits.is_empty() && digits.len() <= 4 && digits.bytes().all(|b| b.is_ascii_digit())
            })
    });
    (KNOWN.contains(&base) && modifier_ok).then_some(text)
}

/// The PostgreSQL type for an Arrow type, or why there is none.
fn from_arrow(data_type: &DataType) -> Result<String, String> {
    use DataType as D;
    Ok(match data_type {
        D::Boolean => "boolean".into(),
        D::Int8 | D::Int16 | D::UInt8 => "smallint".into(),
        D::Int32 | D::UInt16 => "integer".into(),
        D::Int64 | D::UInt32 => "bigint".into(),
        D::UInt64 => "numeric(20,0)".into(),
        D::Float16 | D::Float32 => "real".into(),
        D::Float64 => "double precision".into(),
        // Arrow allows a scale below zero; PostgreSQL before 15 does not, and the digits
        // are whole numbers then.
        D::Decimal128(p, s) | D::Decimal256(p, s) if *s < 0 => format!("numeric({},0)", *p as i32 - *s as i32),
        D::Decimal128(p, s) | D::Decimal256(p, s) => format!("numeric({p},{s})"),
        D::Null | D::Utf8 | D::LargeUtf8 | D::Utf8View => "text".into(),
        D::Binary | D::LargeBinary | D::BinaryView | D::FixedSizeBinary(_) => "bytea".into(),
        D::Date32 | D::Date64 => "date".into(),
        D::Time32(_) | D::Time64(_) => "time".into(),
        D::Timestamp(_, None) => "timestamp".into(),
        D::Timestamp(_, Some(_)) => "timestamptz".into(),
        D::Dictionary(_, values) => from_arrow(values)?,
        D::List(element) | D::LargeList(element) if !element.data_type().is_nested() => {
            format!("{}[]", from_arrow(element.data_type())?)
        }
        other => return Err(format!("Arrow type {other} has no PostgreSQL column type shir makes")),
    })
}

/// `CREATE TABLE name (…)` for the source's columns, all nullable. `name` is quoted already.
pub(super) fn create_table_sql(name: &str, schema: &Schema) -> Result<String, String> {
    if schema.fields().is_empty() {
        return Err("the source has no columns to make a table of".into());
    }
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        let sql_type = match declared(field) {
            Some(declared) => declared.to_owned(),
            None => from_arrow(field.data_type())
                .map_err(|why| format!("source column {} (\"{}\"): {why}", i + 1, field.name()))?,
        };
        columns.push(format!("{} {sql_type}", quote_ident(field.name())));
    }
    Ok(format!("CREATE TABLE {name} ({})", columns.join(", ")))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow::datatypes::TimeUnit;

    use super::*;

    fn with_type(field: Field, sql: &str) -> Field {
        field.with_metadata(HashMap::from([(POSTGRES_TYPE.to_owned(), sql.to_owned())]))
    }

    #[test]
    fn columns_take_the_declared_type_or_the_arrow_one() {
        let schema = Schema::new(vec![
            Field::new("Id", DataType::Int64, true),
            Field::new("amount", DataType::Decimal128(10, 2), true),
            with_type(Field::new("u", DataType::Utf8, true), "uuid"),
            with_type(Field::new("n", DataType::Utf8, true), "numeric"),
            with_type(Field::new("v", DataType::Utf8, true), "varchar(20)"),
            with_type(Field::new("a", DataType::Utf8, true), "numeric(3,-2)[]"),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                true,
            ),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                true,
            ),
        ]);
        assert_eq!(
            create_table_sql("public.t", &schema).unwrap(),
            "CREATE TABLE public.t (\"Id\" bigint, \"amount\" numeric(10,2), \"u\" uuid, \"n\" numeric, \
             \"v\" varchar(20), \"a\" numeric(3,-2)[], \"at\" timestamptz, \"tags\" text[])"
        );
    }

    #[test]
    fn metadata_that_is_not_a_known_type_is_ignored() {
        for bad in [
            "text); DROP TABLE x; --",
            "mood",
            "numeric(1,2,3)",
            "varchar(20) collate \"C\"",
            "uuid[][]",
            "numeric(a)",
        ] {
            let schema = Schema::new(vec![with_type(Field::new("c", DataType::Utf8, true), bad)]);
            assert_eq!(
                create_table_sql("t", &schema).unwrap(),
                "CREATE TABLE t (\"c\" text)",
                "{bad}"
            );
        }
    }

    #[test]
    fn a_type_without_a_column_type_names_the_column() {
        let schema = Schema::new(vec![
            Field::new("ok", DataType::Int32, true),
            Field::new("d", DataType::Duration(TimeUnit::Second), true),
        ]);
        let err = create_table_sql("t", &schema).unwrap_err();
        assert!(err.starts_with("source column 2 (\"d\"): Arrow type Duration"), "{err}");
    }
}
