//! The data plane: what a worker does with one attempt of a copy job.
//!
//! A copy reads its source and writes the sink's *staging* location ([`stage`]); nothing is
//! visible at the target yet. The control plane then asks the Raft log whether this attempt
//! is still the current one, and only then makes the output visible ([`Staged::publish`]):
//! files by an atomic rename, PostgreSQL by committing a transaction that also records the
//! job id, so a second publish of the same job (another attempt) is a no-op. A staged
//! output that must not be published is thrown away ([`Staged::discard`]).
//!
//! Tabular data travels as Arrow record batches between a source reader (CSV, JSON Lines,
//! Parquet, a PostgreSQL table or query) and a sink writer; binary copies move files as
//! they are.

pub mod files;
mod mapping;
mod objects;
pub mod postgres;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::connectors::{ServiceSpec, ServiceType};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
// A copy's inputs and the check it ends with are job-spec types, shared with the state;
// every copy module speaks them, so they are named here too.
pub use crate::job_spec::{
    ColumnMapping, Consistency, CsvOptions, Format, IfExists, Location, SchemaMode, WrittenColumn,
};

/// One end of a copy as a worker sees it: the linked service's definition with its secrets
/// unsealed for this run, and the place within it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The linked service's name, for messages.
    pub service_name: String,
    pub service: ServiceSpec,
    pub location: Location,
    pub format: Format,
    /// A sink's rule for a file that was there before the job; sources ignore it.
    pub if_exists: IfExists,
    /// The IR's proxy, for the stores reached over HTTP.
    pub proxy: Option<crate::connectors::ProxyConfig>,
}

/// Which attempt of which job this is: staging names and PostgreSQL's idempotency record
/// carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptId {
    pub job_id: String,
    pub attempt: u32,
}

/// Rows, bytes and files moved so far; read by the progress reporter while the copy runs.
///
/// Clones share one set of counts: a source's [`Batches`] stream outlives the call that made
/// it, so it keeps a clone to count with. In a tabular copy the *source* counts (rows, bytes
/// and files read) and the sink adds nothing, so no row is counted twice; a binary copy
/// counts the bytes and files it has written.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub rows: Arc<AtomicU64>,
    pub bytes: Arc<AtomicU64>,
    pub files: Arc<AtomicU64>,
}

impl Counters {
    pub fn add(&self, rows: u64, bytes: u64, files: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.files.fetch_add(files, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.rows.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
            self.files.load(Ordering::Relaxed),
        )
    }
}

/// Why a copy failed: one line for `job show` (never a secret), and whether trying again
/// could help (a refused connection) or not (a malformed row, a missing table).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CopyError {
    pub message: String,
    pub retryable: bool,
}

impl CopyError {
    /// Bad input or definition: the same attempt would fail the same way.
    pub fn fatal(message: impl Into<String>) -> Self {
        CopyError {
            message: message.into(),
            retryable: false,
        }
    }

    /// Might pass on another try or another node (network, server restarting, disk full).
    pub fn transient(message: impl Into<String>) -> Self {
        CopyError {
            message: message.into(),
            retryable: true,
        }
    }
}

/// Output written to staging and not yet visible: publish it or discard it.
pub struct Staged {
    pub rows: u64,
    pub bytes: u64,
    pub files: u64,
    pub check: Consistency,
    /// The columns a tabular copy wrote (`stage` fills them in); empty for binary copies.
    pub columns: Vec<WrittenColumn>,
    output: Box<dyn StagedOutput>,
}

impl Staged {
    pub fn new(rows: u64, bytes: u64, files: u64, check: Consistency, output: Box<dyn StagedOutput>) -> Self {
        Staged {
            rows,
            bytes,
            files,
            check,
            columns: Vec::new(),
            output,
        }
    }

    /// Makes the output visible at the target. Idempotent per job: if another attempt of
    /// the same job already published, this one leaves the target as it is.
    pub async fn publish(self) -> Result<Published, CopyError> {
        self.output.publish().await
    }

    /// Removes the staged output; the target is untouched.
    pub async fn discard(self) {
        self.output.discard().await
    }
}

/// What publishing did besides making the output visible.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// Files left as they were because they existed before the job (`--if-exists skip`).
    pub skipped: u64,
}

/// A sink's staged output.
pub trait StagedOutput: Send {
    fn publish(self: Box<Self>) -> BoxFuture<'static, Result<Published, CopyError>>;
    fn discard(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// Record batches from a tabular source.
pub type Batches = BoxStream<'static, Result<arrow::record_batch::RecordBatch, CopyError>>;

/// A column as files keep it: nullable, with no metadata but a PostgreSQL source's own
/// column type ([`postgres::POSTGRES_TYPE`]), which Parquet files carry so that
/// `--create-table` can give a table the types the data came from.
pub(crate) fn plain_field(field: &arrow::datatypes::Field) -> arrow::datatypes::Field {
    let plain = arrow::datatypes::Field::new(field.name(), field.data_type().clone(), true);
    match field.metadata().get(postgres::POSTGRES_TYPE) {
        Some(declared) => plain.with_metadata(std::collections::HashMap::from([(
            postgres::POSTGRES_TYPE.to_owned(),
            declared.clone(),
        )])),
        None => plain,
    }
}

/// Whether a CSV source's columns are typed (inferred, or as `--schema FILE` gives them): if
/// it asks for it (`--schema infer`, the default) and the sink stores types, or is a table
/// that `--create-table` makes. A CSV sink gets the text as it was (no `1.50` turned into
/// `1.5`), and PostgreSQL converts text to its columns' types itself, as `COPY` does.
fn infers_types(source: &Endpoint, sink: &Endpoint, options: &TableOptions) -> bool {
    let asked = matches!(&source.format, Format::Csv(options) if options.schema != SchemaMode::Text);
    let typed_files = sink.service.kind.holds_files() && matches!(sink.format, Format::Parquet | Format::JsonLines);
    let new_table = sink.service.kind == ServiceType::Postgres && options.create_table;
    asked && (typed_files || new_table)
}

/// What a job asks of a tabular copy besides its two ends.
#[derive(Clone, Debug, Default)]
pub struct TableOptions {
    /// `--columns`, `--rename`.
    pub mapping: ColumnMapping,
    /// `--on-bad-row skip`: the rejects file for CSV rows that cannot be copied (on a share).
    pub rejects: Option<Endpoint>,
    /// A missing PostgreSQL sink table is made from the source's columns (`--create-table`).
    pub create_table: bool,
}

/// Reads `source` and writes it to `sink`'s staging location, every column as it is.
pub async fn stage(
    attempt: &AttemptId,
    source: &Endpoint,
    sink: &Endpoint,
    counters: &Counters,
) -> Result<Staged, CopyError> {
    stage_table(attempt, source, sink, &TableOptions::default(), counters).await
}

/// Reads `source` and writes it to `sink`'s staging location, shaped by `options` if it is a
/// table.
pub async fn stage_table(
    attempt: &AttemptId,
    source: &Endpoint,
    sink: &Endpoint,
    options: &TableOptions,
    counters: &Counters,
) -> Result<Staged, CopyError> {
    let binary = matches!(source.format, Format::Binary) || matches!(sink.format, Format::Binary);
    if binary {
        let (from, to) = (source.service.kind, sink.service.kind);
        if !from.holds_files() || !to.holds_files() {
            return Err(CopyError::fatal(
                "a binary copy needs file shares or object stores on both sides",
            ));
        }
        if from == ServiceType::Filesystem && to == ServiceType::Filesystem {
            return files::copy_binary(attempt, source, sink, counters).await;
        }
        return objects::copy_binary(attempt, source, sink, counters).await;
    }
    let rejects = options.rejects.clone().map(|to| files::Rejects::new(attempt, to));
    let batches = match source.service.kind {
        ServiceType::Filesystem => {
            files::read_table(source, counters, infers_types(source, sink, options), rejects.clone()).await?
        }
        ServiceType::Postgres => postgres::read_table(source, counters).await?,
        ServiceType::Http => return Err(CopyError::fatal("an http linked service cannot be a copy source yet")),
        ServiceType::S3 | ServiceType::AzureBlob | ServiceType::Gcs => {
            objects::read_table(source, counters, infers_types(source, sink, options), rejects.clone()).await?
        }
    };
    let batches = mapping::map_columns(batches, &options.mapping, source_shown(source));
    let (batches, written) = schema_of_first(batches);
    let mut staged = match sink.service.kind {
        ServiceType::Filesystem => files::write_table(attempt, sink, batches, counters).await,
        ServiceType::Postgres => postgres::write_table(attempt, sink, batches, counters, options.create_table).await,
        ServiceType::Http => Err(CopyError::fatal("an http linked service cannot be a copy sink")),
        ServiceType::S3 | ServiceType::AzureBlob | ServiceType::Gcs => {
            objects::write_table(attempt, sink, batches, counters).await
        }
    }?;
    staged.columns = written.lock().expect("not poisoned").clone();
    match rejects {
        Some(rejects) => with_rejects(staged, rejects).await,
        None => Ok(staged),
    }
}

/// Adds the rejects file to a staged copy: its count to the check, its file to what is
/// published. The reader has finished (the sink consumed its whole stream), so the counts
/// are final.
async fn with_rejects(mut staged: Staged, rejects: files::Rejects) -> Result<Staged, CopyError> {
    let done = match files::blocking(move || rejects.finish()).await {
        Ok(done) => done,
        Err(e) => {
            staged.discard().await;
            return Err(e);
        }
    };
    let check = &mut staged.check;
    check.rows_skipped = done.skipped;
    // Three counts made in three places: the records the reader read, the rows the sink
    // holds, the lines of the rejects file.
    check.rows_read = done.records;
    check.verified = check.verified && done.records == check.rows_written + done.skipped;
    if !check.verified {
        let message = format!(
            "consistency check failed: {} rows read, {} written, {} skipped to {}",
            done.records, check.rows_written, done.skipped, done.shown
        );
        if let Some(output) = done.output {
            output.discard().await;
        }
        staged.discard().await;
        return Err(CopyError::fatal(message));
    }
    Ok(match done.output {
        Some(output) => Staged {
            output: Box::new(Both(staged.output, output)),
            ..staged
        },
        None => staged,
    })
}

/// Two staged outputs published as one: the sink's first, then the rejects file. Each is
/// idempotent per job, so a retry after a crash between the two publishes both again.
struct Both(Box<dyn StagedOutput>, Box<dyn StagedOutput>);

impl StagedOutput for Both {
    fn publish(self: Box<Self>) -> BoxFuture<'static, Result<Published, CopyError>> {
        Box::pin(async move {
            let Both(first, second) = *self;
            let published = match first.publish().await {
                Ok(published) => published,
                Err(e) => {
                    second.discard().await;
                    return Err(e);
                }
            };
            second.publish().await?;
            Ok(published)
        })
    }

    fn discard(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let Both(first, second) = *self;
            first.discard().await;
            second.discard().await;
        })
    }
}

/// The source as messages name it: `service:path`, or the table or query.
fn source_shown(source: &Endpoint) -> String {
    match &source.location {
        Location::Path(p) => format!("{}:{p}", source.service_name),
        Location::Table { schema, table } => format!(
            "{}:{}.{}",
            source.service_name,
            crate::job_spec::names::display_ident(schema),
            crate::job_spec::names::display_ident(table)
        ),
        Location::Query(_) => format!("the query of {}", source.service_name),
    }
}

/// Passes `batches` on and keeps the columns of the first: every source sends at least one
/// batch (an empty one for a source without rows), and all batches share its schema, so this
/// is what the sink wrote, read off the stream rather than off each sink.
fn schema_of_first(batches: Batches) -> (Batches, Arc<std::sync::Mutex<Vec<WrittenColumn>>>) {
    use futures::StreamExt as _;
    let slot = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = slot.clone();
    let mut first = true;
    let batches = batches.inspect(move |item| {
        if let (true, Ok(batch)) = (first, item) {
            first = false;
            *seen.lock().expect("not poisoned") = batch
                .schema()
                .fields()
                .iter()
                .map(|f| WrittenColumn {
                    name: f.name().clone(),
                    data_type: f.data_type().to_string(),
                })
                .collect();
        }
    });
    (batches.boxed(), slot)
}
