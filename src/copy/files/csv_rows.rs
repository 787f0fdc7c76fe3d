//! One CSV file's records turned into record batches: text columns (an empty field or a
//! `--csv-null` value is a null), converted to their types when the columns are typed.
//!
//! Under `--on-bad-row skip` a record that cannot be copied goes to the rejects file
//! (`rejects`) instead of failing the copy: one of another width as it is read, one with a
//! value that does not fit when its batch is converted (the batch is converted again without
//! it). Otherwise the first such record fails the copy with its file, line and column.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, StringBuilder};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

use super::convert::{self, Typing};
use super::infer;
use super::read::{Input, Stop, check_last_record, csv_error, csv_reader};
use super::rejects::{Kept, Reject, Rejects};
use super::{BATCH_BYTES, BATCH_ROWS};
use crate::copy::{CopyError, Counters, CsvOptions};

/// The schemas a CSV file is read with: its text columns, and the types they are converted
/// to when the columns are typed.
#[derive(Clone, Copy)]
pub(super) struct Schemas<'a> {
    pub text: &'a SchemaRef,
    pub typed: Option<&'a SchemaRef>,
    pub typing: &'a Typing,
}

/// Where bad rows go, and the text they are quoted from.
struct Skipping<'a> {
    rejects: &'a Rejects,
    kept: Kept,
}

/// The rows of the batch being built: each one's first line, and under skipping its text's
/// place in the stream and the records already refused (for their width) among them.
#[derive(Default)]
struct Rows {
    lines: Vec<u64>,
    spans: Vec<(u64, u64)>,
    refused: Vec<Refused>,
}

/// A record refused as it was read, written to the rejects file with its batch so that the
/// file lists rows in the order of their lines.
struct Refused {
    line: u64,
    column: Option<String>,
    reason: String,
    text: String,
}

impl Rows {
    fn clear(&mut self) {
        self.lines.clear();
        self.spans.clear();
        self.refused.clear();
    }
}

impl Skipping<'_> {
    /// Writes `refused` to the rejects file in line order.
    fn write(&self, mut refused: Vec<Refused>, input: &Input) -> Result<(), CopyError> {
        refused.sort_by_key(|r| r.line);
        for r in &refused {
            self.rejects.reject(&Reject {
                file: &input.shown,
                line: r.line,
                column: r.column.as_deref(),
                reason: &r.reason,
                text: &r.text,
            })?;
        }
        Ok(())
    }
}

impl Schemas<'_> {
    /// A batch of text columns as it is sent on: typed if the columns are, without the rows
    /// that go to the rejects file.
    fn batch(
        self,
        builders: Vec<StringBuilder>,
        rows: usize,
        at: &mut Rows,
        input: &Input,
        skipping: Option<&Skipping>,
    ) -> Result<RecordBatch, CopyError> {
        let text = string_batch(self.text, builders, rows, input)?;
        let refused = std::mem::take(&mut at.refused);
        let Some(typed) = self.typed else {
            if let Some(skipping) = skipping {
                skipping.write(refused, input)?;
            }
            return Ok(text);
        };
        let failed = |m: convert::Misfit| {
            let line = at.lines.get(m.row).copied().unwrap_or(0);
            m.error(typed, line, &input.shown, self.typing)
        };
        let first = match convert::convert(&text, typed, self.typing) {
            Ok(batch) => {
                if let Some(skipping) = skipping {
                    skipping.write(refused, input)?;
                }
                return Ok(batch);
            }
            Err(first) => first,
        };
        let Some(skipping) = skipping else {
            return Err(failed(first));
        };
        let misfits = convert::misfits(&text, typed, self.typing);
        let mut keep = vec![true; text.num_rows()];
        let mut refused = refused;
        for m in misfits {
            keep[m.row] = false;
            let (start, end) = at.spans.get(m.row).copied().unwrap_or((0, 0));
            refused.push(Refused {
                line: at.lines.get(m.row).copied().unwrap_or(0),
                column: Some(typed.field(m.column).name().clone()),
                reason: m.reason,
                text: skipping.kept.record(start, end),
            });
        }
        skipping.write(refused, input)?;
        let kept = arrow::compute::filter_record_batch(&text, &BooleanArray::from(keep))
            .map_err(|e| CopyError::fatal(format!("{}: {e}", input.shown)))?;
        // Every row left converts on its own; if they still do not together, that is no row's
        // fault, and the copy fails rather than guess.
        convert::convert(&kept, typed, self.typing).map_err(|_| failed(first))
    }
}

pub(super) fn read_csv(
    input: &Input,
    options: &CsvOptions,
    schemas: Schemas,
    rejects: Option<&Rejects>,
    emit: &mut dyn FnMut(RecordBatch) -> Result<(), Stop>,
    counters: &Counters,
) -> Result<(), Stop> {
    let skipping = rejects.map(|rejects| Skipping {
        rejects,
        kept: Kept::default(),
    });
    let (mut reader, skipped) = csv_reader(input, options, skipping.is_some(), skipping.as_ref().map(|s| &s.kept))?;
    counters.add(0, skipped, 0);
    let mut record = csv::StringRecord::new();
    let failed = |e| Stop::Failed(csv_error(input, e, options.header));
    // Where the record read last starts: at the end, it is checked for an open quote.
    let mut last = None;
    if options.header && reader.read_record(&mut record).map_err(failed)? {
        last = record.position().cloned();
    }
    let columns = schemas.text.fields().len();
    let mut at = Rows::default();
    let new_builders = || -> Vec<StringBuilder> {
        (0..columns)
            .map(|_| StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 8))
            .collect()
    };
    let mut builders = new_builders();
    // Rows in the batch, records read for it (rows and rejected ones), its text's length.
    let (mut rows, mut records, mut text) = (0usize, 0u64, 0usize);
    let mut counted = 0;
    let mut flush = |builders: Vec<StringBuilder>, rows: usize, at: &mut Rows, end: u64| -> Result<(), Stop> {
        let batch = schemas.batch(builders, rows, at, input, skipping.as_ref())?;
        at.clear();
        if let Some(skipping) = &skipping {
            skipping.kept.forget_before(end);
        }
        counters.add(batch.num_rows() as u64, end - counted, 0);
        counted = end;
        emit(batch)
    };

    loop {
        if !reader.read_record(&mut record).map_err(failed)? {
            break;
        }
        last = record.position().cloned();
        let (line, start) = last.as_ref().map_or((0, 0), |p| (p.line(), p.byte()));
        records += 1;
        if let Some(skipping) = &skipping {
            let end = reader.position().byte();
            // The reader is lenient under skipping; a row of another width is refused here.
            if record.len() != columns {
                let expected = if options.header {
                    "the header has"
                } else {
                    "the first row has"
                };
                at.refused.push(Refused {
                    line,
                    column: None,
                    reason: format!("{} fields where {expected} {columns}", record.len()),
                    text: skipping.kept.record(start, end),
                });
                continue;
            }
            at.spans.push((start, end));
        }
        if schemas.typed.is_some() {
            at.lines.push(line);
        }
        for (builder, field) in builders.iter_mut().zip(record.iter()) {
            if infer::is_null(field, &options.nulls) {
                builder.append_null();
            } else {
                builder.append_value(field);
            }
        }
        rows += 1;
        text += record.as_slice().len();
        if rows == BATCH_ROWS || text >= BATCH_BYTES {
            let end = reader.position().byte();
            flush(std::mem::replace(&mut builders, new_builders()), rows, &mut at, end)?;
            count_read(rejects, &mut records);
            (rows, text) = (0, 0);
        }
    }
    check_last_record(input, options, last)?;
    if rows > 0 || !at.refused.is_empty() {
        flush(builders, rows, &mut at, reader.position().byte())?;
    } else {
        counters.add(0, reader.position().byte() - counted, 0);
    }
    count_read(rejects, &mut records);
    counters.add(0, 0, 1);
    Ok(())
}

/// Hands the records read since the last call to the rejects file's count.
fn count_read(rejects: Option<&Rejects>, records: &mut u64) {
    if let Some(rejects) = rejects {
        rejects.count_read(*records);
    }
    *records = 0;
}

fn string_batch(
    schema: &SchemaRef,
    builders: Vec<StringBuilder>,
    rows: usize,
    input: &Input,
) -> Result<RecordBatch, CopyError> {
    let columns: Vec<ArrayRef> = builders
        .into_iter()
        .map(|mut b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(|e| CopyError::fatal(format!("{}: {e}", input.shown)))
}
