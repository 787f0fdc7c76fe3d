//! `--columns` and `--rename` on a tabular copy's batches, whatever the source: the first
//! batch brings the source's columns (every source sends at least one, an empty one for a
//! source without rows), against which the mapping is checked once; every batch is then
//! projected and renamed without copying its data.

use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use futures::StreamExt as _;

use super::{Batches, CopyError};
use crate::job_spec::ColumnMapping;

/// The source columns to take, by index, and the schema they are written with.
struct Projection {
    indices: Vec<usize>,
    schema: SchemaRef,
}

impl Projection {
    /// `shown` names the source in messages. A column that is not there, or two output
    /// columns of one name, fail the copy before any row is written.
    fn of(source: &Schema, mapping: &ColumnMapping, shown: &str) -> Result<Projection, CopyError> {
        let names: Vec<&str> = source.fields().iter().map(|f| f.name().as_str()).collect();
        let absent = |name: &str, flag: &str| {
            CopyError::fatal(format!(
                "{flag} names a column '{name}' that {shown} does not have (its columns: {})",
                names.join(", ")
            ))
        };
        let indices: Vec<usize> = if mapping.select.is_empty() {
            (0..names.len()).collect()
        } else {
            mapping
                .select
                .iter()
                .map(|name| {
                    names
                        .iter()
                        .position(|n| n == name)
                        .ok_or_else(|| absent(name, "--columns"))
                })
                .collect::<Result<_, _>>()?
        };
        if let Some((from, _)) = mapping.rename.iter().find(|(from, _)| !names.contains(&from.as_str())) {
            return Err(absent(from, "--rename"));
        }
        let mut fields: Vec<Field> = Vec::with_capacity(indices.len());
        for &i in &indices {
            let field = source.field(i);
            let name = mapping.output_name(field.name());
            if fields.iter().any(|f| f.name() == name) {
                return Err(CopyError::fatal(format!(
                    "{shown}: two columns would be named '{name}' (--rename gives a name the source has)"
                )));
            }
            fields.push(field.clone().with_name(name));
        }
        Ok(Projection {
            indices,
            schema: Arc::new(Schema::new_with_metadata(fields, source.metadata().clone())),
        })
    }

    fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch, CopyError> {
        let columns = self.indices.iter().map(|&i| batch.column(i).clone()).collect();
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )
        .map_err(|e| CopyError::fatal(format!("cannot select the columns: {e}")))
    }
}

/// `batches` with only the mapped columns, renamed; unchanged for the identity mapping.
pub(super) fn map_columns(batches: Batches, mapping: &ColumnMapping, shown: String) -> Batches {
    if mapping.is_identity() {
        return batches;
    }
    let mapping = mapping.clone();
    let mut projection: Option<Projection> = None;
    batches
        .map(move |item| {
            let batch = item?;
            if projection.is_none() {
                projection = Some(Projection::of(&batch.schema(), &mapping, &shown)?);
            }
            projection.as_ref().expect("made above").apply(&batch)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::DataType;

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("a", DataType::Int64, true),
                Field::new("b", DataType::Utf8, true),
                Field::new("c", DataType::Int64, true),
            ])),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef,
                Arc::new(StringArray::from(vec!["x", "y"])),
                Arc::new(Int64Array::from(vec![10, 20])),
            ],
        )
        .unwrap()
    }

    async fn mapped(select: &[&str], rename: &[(&str, &str)]) -> Result<Vec<RecordBatch>, CopyError> {
        let mapping = ColumnMapping {
            select: select.iter().map(|s| s.to_string()).collect(),
            rename: rename.iter().map(|(f, t)| (f.to_string(), t.to_string())).collect(),
        };
        let source = futures::stream::iter(vec![Ok(batch()), Ok(batch())]).boxed();
        map_columns(source, &mapping, "share:in/a.csv".into())
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    #[tokio::test]
    async fn columns_are_selected_ordered_and_renamed() {
        let out = mapped(&["c", "a"], &[("a", "id")]).await.unwrap();
        assert_eq!(out.len(), 2);
        let names: Vec<String> = out[1].schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["c", "id"]);
        assert_eq!(out[1].schema().field(0).data_type(), &DataType::Int64);
        let c = out[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(c.values(), &[10, 20]);
        let all = mapped(&[], &[("b", "name")]).await.unwrap();
        let names: Vec<String> = all[0].schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["a", "name", "c"]);
    }

    #[tokio::test]
    async fn a_column_the_source_lacks_or_a_clash_fails_naming_it() {
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let cases: [Case; 3] = [
            (
                &["a", "zz"],
                &[],
                "--columns names a column 'zz' that share:in/a.csv does not have (its columns: a, b, c)",
            ),
            (
                &[],
                &[("q", "r")],
                "--rename names a column 'q' that share:in/a.csv does not have (its columns: a, b, c)",
            ),
            (
                &[],
                &[("b", "c")],
                "share:in/a.csv: two columns would be named 'c' (--rename gives a name the source has)",
            ),
        ];
        for (select, rename, expected) in cases {
            assert_eq!(mapped(select, rename).await.unwrap_err().message, expected);
        }
    }
}
