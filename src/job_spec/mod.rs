//! What a copy job is, apart from where and how it runs: its two datasets (a linked service
//! and a place in it), the file formats, the retry policy, and the data consistency check
//! an attempt ends with.
//!
//! Both the replicated state (`state::jobs`, which stores specs and checks) and the data
//! plane (`copy`, which reads and writes them) use these types; neither owns them, so the
//! state does not depend on the copy engine. [`parse`] turns an operator's submission into
//! a spec; [`names`] reads and shows PostgreSQL table names as operators type them.

mod columns;
pub mod names;
pub mod parse;
pub mod paths;
pub mod schema;

use serde::{Deserialize, Serialize};

pub use parse::{InvalidSpec, Submission};
pub use schema::{ColumnType, NamedColumn};

/// Where inside a linked service a job reads or writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Location {
    /// Filesystem: a path relative to the service's root; for a source it may hold a glob
    /// (`*`, `?`, `**`) or name a directory (all files under it, recursively).
    Path(String),
    /// PostgreSQL: a table.
    Table { schema: String, table: String },
    /// PostgreSQL source: a query.
    Query(String),
}

/// How files are read or written (filesystem only; PostgreSQL ignores it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    Csv(CsvOptions),
    JsonLines,
    Parquet,
    /// Files as they are: no parsing, sizes and modification times preserved.
    Binary,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvOptions {
    /// First line holds column names (read: taken as names; write: written).
    pub header: bool,
    pub delimiter: u8,
    pub quote: u8,
    /// Read: an input without rows is copied rather than refused.
    #[serde(default)]
    pub allow_empty: bool,
    /// Read: the files' text encoding, decoded to UTF-8.
    #[serde(default)]
    pub encoding: Encoding,
    /// Read: whether column types are inferred or every column is text. Specs written
    /// before inference existed read as `Text`, so a job queued across an upgrade copies
    /// as it was submitted.
    #[serde(default = "SchemaMode::before_inference")]
    pub schema: SchemaMode,
    /// Read: fields equal to one of these are nulls (`--csv-null`), as empty fields are.
    #[serde(default)]
    pub nulls: Vec<String>,
    /// Read: the strftime formats of timestamps and of dates, when not ISO 8601
    /// (`--timestamp-format`, `--date-format`; checked at submit).
    #[serde(default)]
    pub timestamp_format: Option<String>,
    #[serde(default)]
    pub date_format: Option<String>,
}

/// How a CSV source's columns are typed (`--schema`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchemaMode {
    /// From a sample of the values, when the sink stores types (Parquet, JSON Lines).
    #[default]
    Infer,
    /// Every column is text.
    Text,
    /// The types the operator gave (`--schema FILE`), one for every column of the file.
    Given(Vec<NamedColumn>),
}

impl SchemaMode {
    fn before_inference() -> Self {
        SchemaMode::Text
    }
}

/// A CSV source's text encoding. Anything but UTF-8 is decoded as it is read, so a byte
/// that is not valid UTF-8 is an error only when no other encoding was named.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encoding {
    #[default]
    Utf8,
    /// ISO-8859-1: every byte is the code point of its value.
    Latin1,
    /// Latin-1 with printable characters (`€`, curly quotes) in 0x80–0x9F.
    Windows1252,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            header: true,
            delimiter: b',',
            quote: b'"',
            allow_empty: false,
            encoding: Encoding::Utf8,
            schema: SchemaMode::Infer,
            nulls: Vec::new(),
            timestamp_format: None,
            date_format: None,
        }
    }
}

/// The data consistency check of a copy (ADF's `validateDataConsistency`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consistency {
    /// Tabular copies: rows read from the source and rows written to the sink.
    pub rows_read: u64,
    pub rows_written: u64,
    /// Binary copies: a checksum over the files' contents (in path order), of the source as
    /// read and of the staged output as read back, named by its algorithm:
    /// `xxh3-128:` and 32 hex digits.
    pub source_checksum: Option<String>,
    pub sink_checksum: Option<String>,
    /// Whether the two sides agree.
    pub verified: bool,
    /// Tabular copies under `--on-bad-row skip`: rows read that went to the rejects file
    /// instead of the sink; `rows_read = rows_written + rows_skipped`.
    #[serde(default)]
    pub rows_skipped: u64,
}

/// Columns of what a job wrote kept with it for `job show`; a wider table keeps the first
/// ones and the count. Every finished job in the history (10,000 by default) is in every
/// node's state and snapshot, so a table of thousands of columns must not multiply that.
pub const MAX_REPORTED_COLUMNS: usize = 256;

/// One column of what a tabular copy wrote, as `job show` reports it: its name and its Arrow
/// type as arrow prints it (`Int64`, `Decimal128(12, 2)`), whatever the source was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenColumn {
    pub name: String,
    pub data_type: String,
}

/// One end of a job as submitted: a linked service by name and a place in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetRef {
    pub service: String,
    pub location: Location,
    pub format: Format,
}

impl DatasetRef {
    /// How the dataset reads back, for `job show`: in the syntax it was submitted in.
    pub fn describe(&self) -> String {
        match &self.location {
            Location::Path(p) => format!("{}:/{p}", self.service),
            Location::Table { schema, table } => format!(
                "{}:{}.{}",
                self.service,
                names::display_ident(schema),
                names::display_ident(table)
            ),
            Location::Query(q) => format!("{}:{q}", self.service),
        }
    }
}

/// How often a job may run and how long it waits between tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. Attempts that end because their node went
    /// Offline count too: a job that kills its nodes must not go round forever.
    pub max_attempts: u32,
    pub interval_ms: u64,
}

impl Default for RetryPolicy {
    /// Three tries, five seconds apart: enough to ride out a node failover or a database
    /// restart, few enough that a job that cannot succeed fails within a minute.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            interval_ms: 5_000,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    pub source: DatasetRef,
    pub sink: DatasetRef,
    pub retry: RetryPolicy,
    /// An attempt that reads nothing for this long is stopped and fails (retryably): a file
    /// share or database that stops answering without closing the connection would
    /// otherwise hold the node's slot for ever.
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout_ms: u64,
    /// What publishing does to a sink file that was there before the job.
    #[serde(default)]
    pub if_exists: IfExists,
    /// A missing PostgreSQL sink table is made from the source's columns, in the load's
    /// transaction (`--create-table`). Specs from before it read as `false`.
    #[serde(default)]
    pub create_table: bool,
    /// Which source columns are copied, in which order, under which names.
    #[serde(default)]
    pub mapping: ColumnMapping,
    /// `--on-bad-row skip --bad-rows SERVICE:/folder/`: CSV rows that cannot be copied go to
    /// a rejects file there instead of failing the job. `None`: they fail it.
    #[serde(default)]
    pub bad_rows: Option<BadRows>,
}

/// Where a job's rejected rows go: a file named after the job in a folder of a share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadRows {
    pub service: String,
    /// Relative to the share's root, without a trailing `/`; empty: the root itself.
    pub folder: String,
}

impl BadRows {
    /// The rejects file of job `job_id`, relative to the share's root.
    pub fn file(&self, job_id: &str) -> String {
        let name = format!("{job_id}.rejects.jsonl");
        if self.folder.is_empty() {
            name
        } else {
            format!("{}/{name}", self.folder)
        }
    }

    /// The rejects file as `job show` prints it, `service:/path`.
    pub fn describe(&self, job_id: &str) -> String {
        format!("{}:/{}", self.service, self.file(job_id))
    }
}

impl JobSpec {
    /// The linked services the job uses: its source, its sink, and where its rejected rows go.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        [
            Some(&self.source.service),
            Some(&self.sink.service),
            self.bad_rows.as_ref().map(|b| &b.service),
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
    }
}

/// `--columns` and `--rename`: the source columns a tabular copy writes, in order, and new
/// names for some. Empty: every column, as the source has it. Names are matched exactly (a
/// CSV header or a Parquet schema has no case folding to follow).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnMapping {
    /// Source columns in output order; empty: all of them, in the source's order.
    pub select: Vec<String>,
    /// `(source name, output name)` pairs.
    pub rename: Vec<(String, String)>,
}

impl ColumnMapping {
    pub fn is_identity(&self) -> bool {
        self.select.is_empty() && self.rename.is_empty()
    }

    /// The name a source column is written under.
    pub fn output_name<'a>(&'a self, source: &'a str) -> &'a str {
        self.rename
            .iter()
            .find(|(from, _)| from == source)
            .map_or(source, |(_, to)| to.as_str())
    }
}

/// What happens to a sink file that existed before the job (`--if-exists`). A file the
/// job's own earlier attempt published never counts as existing: publishing again stays
/// idempotent whatever this says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IfExists {
    /// Replace it, as `cp` and ADF do.
    #[default]
    Overwrite,
    /// Fail the job, leaving the file as it was.
    Fail,
    /// Leave the file as it was and publish the job's other files; the job succeeds and
    /// its outcome counts the files skipped.
    Skip,
}

impl IfExists {
    pub fn as_str(self) -> &'static str {
        match self {
            IfExists::Overwrite => "overwrite",
            IfExists::Fail => "fail",
            IfExists::Skip => "skip",
        }
    }
}

/// [`crate::timing::DEFAULT_STALL_TIMEOUT`] in the milliseconds a job spec carries.
pub const DEFAULT_STALL_TIMEOUT_MS: u64 = crate::timing::DEFAULT_STALL_TIMEOUT.as_millis() as u64;

fn default_stall_timeout() -> u64 {
    DEFAULT_STALL_TIMEOUT_MS
}
