//! Tabular file sinks: CSV, JSON Lines and Parquet, written on a blocking thread to a
//! staging file next to the target.
//!
//! The async side pulls batches from the source and passes them through a short channel,
//! then an end marker. The writer thread finishes and fsyncs the staging file only on that
//! marker: if the channel closes without it (the source failed, the copy was cancelled) the
//! thread removes the staging file and the directories it made. Rows that came in are
//! counted on the async side, rows that the file holds on the writer's (for Parquet, from
//! the footer it wrote); the consistency check compares the two.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::error::ArrowError;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use futures::StreamExt;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use tokio::sync::mpsc;

use super::paths::{Root, Target, create_dirs, sink_file, staging_name};
use super::stage::{StagedFile, StagedFiles};
use super::{BATCHES_IN_FLIGHT, IO_BUFFER, TableFormat, io_error};
use crate::copy::{AttemptId, Batches, Consistency, CopyError, Counters, Endpoint, IfExists, Staged};

/// Parquet row groups are cut at this size: readers fetch and decode a row group at a
/// time, and the writer buffers one in memory, so it bounds the writer's memory while
/// staying in the 64–256 MiB range that readers handle best.
const PARQUET_ROW_GROUP_BYTES: usize = 128 << 20;

pub(super) async fn write_table(
    attempt: &AttemptId,
    sink: &Endpoint,
    mut batches: Batches,
    // A tabular copy's progress is counted by its source; see `Counters`.
    _counters: &Counters,
) -> Result<Staged, CopyError> {
    let root = Root::of(sink)?;
    let target = sink_file(&root, root.path_of(sink)?)?;
    let format = TableFormat::of(sink)?;

    let (tx, rx) = mpsc::channel(BATCHES_IN_FLIGHT);
    let writer = {
        let (target, attempt, if_exists) = (target.clone(), attempt.clone(), sink.if_exists);
        tokio::task::spawn_blocking(move || write_staging(&root, &target, &attempt, if_exists, &format, rx))
    };

    let mut rows_read = 0u64;
    let mut source_failure = None;
    while let Some(item) = batches.next().await {
        match item {
            Ok(batch) => {
                rows_read += batch.num_rows() as u64;
                // A closed channel means the writer failed; its error is awaited below.
                if tx.send(Some(batch)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                source_failure = Some(e);
                break;
            }
        }
    }
    if source_failure.is_none() {
        let _ = tx.send(None).await;
    }
    drop(tx);
    drop(batches);

    let written = writer
        .await
        .map_err(|e| CopyError::fatal(format!("writing {} stopped unexpectedly: {e}", target.shown)))?;
    if let Some(e) = source_failure {
        return Err(e);
    }
    let written = written?;

    let check = Consistency {
        rows_read,
        rows_written: written.rows,
        verified: rows_read == written.rows,
        ..Consistency::default()
    };
    if !check.verified {
        let staged = written.staged;
        let _ = tokio::task::spawn_blocking(move || staged.discard_now()).await;
        return Err(CopyError::fatal(format!(
            "consistency check failed for {}: {rows_read} rows read, {} written",
            target.shown, check.rows_written
        )));
    }
    Ok(Staged::new(
        written.rows,
        written.bytes,
        1,
        check,
        Box::new(written.staged),
    ))
}

/// What the writer thread produced.
struct Written {
    rows: u64,
    bytes: u64,
    staged: StagedFiles,
}

/// Writes the batches that arrive on `rx` (`None`: the end) to the staging file and fsyncs
/// it. Any failure, or a channel closed before the end, removes what was staged.
fn write_staging(
    root: &Root,
    target: &Target,
    attempt: &AttemptId,
    if_exists: IfExists,
    format: &TableFormat,
    mut rx: mpsc::Receiver<Option<RecordBatch>>,
) -> Result<Written, CopyError> {
    root.check_present()?;
    let shown = &target.shown;
    let dir = target.path.parent().expect("a sink file lies under the root");
    let name = target.path.file_name().expect("a sink path names a file");
    let mut staged = StagedFiles::new(attempt, if_exists);
    create_dirs(root, dir, &mut staged.created_dirs)?;
    if target.path.is_dir() {
        return Err(CopyError::fatal(format!(
            "{shown} is a directory; a table is written to a file"
        )));
    }

    let temp = dir.join(staging_name(name, attempt));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        // A leftover of this same attempt (its process died and it runs again) is
        // overwritten; other attempts have other names.
        .truncate(true)
        .open(&temp)
        .map_err(|e| io_error(format!("cannot create the staging file for {shown}"), &e))?;
    staged.add(
        &file,
        StagedFile {
            temp,
            target: target.path.clone(),
            shown: shown.clone(),
        },
    )?;

    let mut writer = TableWriter {
        format: format.clone(),
        encoder: Encoder::Pending(BufWriter::with_capacity(IO_BUFFER, file)),
        schema: None,
        rows: 0,
        shown: shown.clone(),
    };
    loop {
        match rx.blocking_recv() {
            Some(Some(batch)) => writer.write(batch)?,
            Some(None) => break,
            None => return Err(CopyError::transient(format!("the copy to {shown} was abandoned"))),
        }
    }
    let (rows, file) = writer.finish()?;
    file.sync_all()
        .map_err(|e| io_error(format!("cannot sync the staging file for {shown}"), &e))?;
    let bytes = file
        .metadata()
        .map_err(|e| io_error(format!("cannot read the staging file for {shown}"), &e))?
        .len();
    Ok(Written { rows, bytes, staged })
}

/// The encoder of one staging file; made on the first batch, which brings the schema.
enum Encoder {
    Pending(BufWriter<File>),
    Csv(Box<arrow::csv::Writer<BufWriter<File>>>),
    Json(arrow::json::LineDelimitedWriter<BufWriter<File>>),
    Parquet(Box<ArrowWriter<BufWriter<File>>>),
    /// Between states, and after a failure.
    Taken,
}

struct TableWriter {
    format: TableFormat,
    encoder: Encoder,
    /// The columns of the first batch, all nullable: every later batch must have the same.
    schema: Option<SchemaRef>,
    /// Rows handed to the encoder and accepted by it.
    rows: u64,
    shown: String,
}

impl TableWriter {
    fn write(&mut self, batch: RecordBatch) -> Result<(), CopyError> {
        let batch = self.conform(batch)?;
        if let Encoder::Pending(_) = self.encoder {
            self.start(batch.schema())?;
        }
        let result = match &mut self.encoder {
            Encoder::Csv(w) if batch.num_columns() > 0 => w.write(&batch),
            // CSV has no way to write rows without columns; the row count then disagrees
            // and the consistency check says so.
            Encoder::Csv(_) => return Ok(()),
            Encoder::Json(w) => w.write(&batch),
            Encoder::Parquet(w) => w.write(&batch).map_err(|e| self.parquet_error_text(e)),
            Encoder::Pending(_) | Encoder::Taken => unreachable!("the encoder was started above"),
        };
        result.map_err(|e| self.arrow_error(e))?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Gives a batch the writer's schema: the first batch sets it (made nullable, since a
    /// later batch may have NULLs where the first had none); later ones must match it.
    fn conform(&mut self, batch: RecordBatch) -> Result<RecordBatch, CopyError> {
        let schema = match &self.schema {
            Some(schema) => {
                let same = schema.fields().len() == batch.num_columns()
                    && schema
                        .fields()
                        .iter()
                        .zip(batch.schema().fields().iter())
                        .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
                if !same {
                    return Err(CopyError::fatal(format!(
                        "cannot write {}: the source changed its columns mid-copy",
                        self.shown
                    )));
                }
                schema.clone()
            }
            None => {
                let fields: Vec<Field> = batch
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| crate::copy::plain_field(f))
                    .collect();
                let schema = Arc::new(Schema::new(fields));
                self.schema = Some(schema.clone());
                schema
            }
        };
        let rows = batch.num_rows();
        RecordBatch::try_new_with_options(
            schema,
            batch.columns().to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| CopyError::fatal(format!("cannot write {}: {e}", self.shown)))
    }

    fn start(&mut self, schema: SchemaRef) -> Result<(), CopyError> {
        let Encoder::Pending(out) = std::mem::replace(&mut self.encoder, Encoder::Taken) else {
            return Ok(());
        };
        self.encoder = match &self.format {
            TableFormat::Csv(options) => Encoder::Csv(Box::new(
                arrow::csv::WriterBuilder::new()
                    .with_header(options.header)
                    .with_delimiter(options.delimiter)
                    .with_quote(options.quote)
                    .build(out),
            )),
            TableFormat::JsonLines => Encoder::Json(arrow::json::LineDelimitedWriter::new(out)),
            TableFormat::Parquet => {
                let properties = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .set_max_row_group_bytes(Some(PARQUET_ROW_GROUP_BYTES))
                    .build();
                let writer = ArrowWriter::try_new(out, schema, Some(properties))
                    .map_err(|e| CopyError::fatal(format!("cannot write {} as Parquet: {e}", self.shown)))?;
                Encoder::Parquet(Box::new(writer))
            }
        };
        Ok(())
    }

    /// Ends the file (a Parquet footer, the last buffered bytes) and returns the rows it
    /// holds and the file, for fsync.
    fn finish(mut self) -> Result<(u64, File), CopyError> {
        if let Encoder::Pending(_) = self.encoder {
            // No batch at all (a source that yields nothing): CSV and JSON Lines stay empty;
            // Parquet still needs a schema, an empty one.
            if let TableFormat::Parquet = self.format {
                self.start(Arc::new(Schema::empty()))?;
            }
        }
        let shown = self.shown.clone();
        let flush_error = |e: std::io::Error| io_error(format!("cannot write {shown}"), &e);
        let (rows, out) = match std::mem::replace(&mut self.encoder, Encoder::Taken) {
            Encoder::Pending(out) => (self.rows, out),
            Encoder::Csv(w) => (self.rows, w.into_inner()),
            Encoder::Json(mut w) => {
                w.finish().map_err(|e| self.arrow_error(e))?;
                (self.rows, w.into_inner())
            }
            Encoder::Parquet(mut w) => {
                let metadata = w.finish().map_err(|e| self.parquet_error(e))?;
                let rows = metadata.file_metadata().num_rows().max(0) as u64;
                // A finished writer no longer gives up its output; flush it in place and
                // keep a second handle on the file for the fsync.
                w.inner_mut().flush().map_err(flush_error)?;
                let file = w.inner().get_ref().try_clone().map_err(flush_error)?;
                return Ok((rows, file));
            }
            Encoder::Taken => unreachable!("finish runs once"),
        };
        let mut out = out;
        out.flush().map_err(flush_error)?;
        let file = out.into_inner().map_err(|e| flush_error(e.into_error()))?;
        Ok((rows, file))
    }

    fn arrow_error(&self, e: ArrowError) -> CopyError {
        match e {
            ArrowError::IoError(_, io) => io_error(format!("cannot write {}", self.shown), &io),
            e => CopyError::fatal(format!("cannot write {}: {e}", self.shown)),
        }
    }

    /// Parquet's errors through the Arrow error type, so that I/O errors (a full disk) are
    /// classified the same way for every format.
    fn parquet_error_text(&self, e: ParquetError) -> ArrowError {
        match e {
            ParquetError::External(inner) => match inner.downcast::<std::io::Error>() {
                Ok(io) => ArrowError::IoError(io.to_string(), *io),
                Err(other) => ArrowError::ExternalError(other),
            },
            e => ArrowError::ExternalError(Box::new(e)),
        }
    }

    fn parquet_error(&self, e: ParquetError) -> CopyError {
        let e = self.parquet_error_text(e);
        self.arrow_error(e)
    }
}
