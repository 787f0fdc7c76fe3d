//! An operator's job submission read into a [`JobSpec`]: the datasets against their linked
//! services' types, the formats from flags or file extensions, the CSV options, the retry
//! policy and the stall timeout. Every refusal is one line naming the flag at fault.

use super::names::{self, Named};
use super::paths::{self, RelPath};
use super::{
    BadRows, ColumnMapping, CsvOptions, DEFAULT_STALL_TIMEOUT_MS, DatasetRef, Encoding, Format, IfExists, JobSpec,
    Location, RetryPolicy, SchemaMode,
};
use crate::connectors::ServiceType;

/// A submission refused: the line says which flag is wrong and what it takes instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

fn invalid(why: impl Into<String>) -> InvalidSpec {
    InvalidSpec(why.into())
}

/// A job as `shir job submit` gives it, before anything is checked. Empty strings and zeros
/// mean "the default", as on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Submission {
    pub name: String,
    /// `LINKED_SERVICE:PATH`, `LINKED_SERVICE:SCHEMA.TABLE` or `LINKED_SERVICE:QUERY`.
    pub source: String,
    pub sink: String,
    /// `csv`, `jsonl`, `parquet`; empty: from the file extension.
    pub source_format: String,
    pub sink_format: String,
    /// Files as they are.
    pub binary: bool,
    pub csv_no_header: bool,
    /// One character; empty: ','.
    pub csv_delimiter: String,
    /// 0: the default policy's.
    pub max_attempts: u32,
    pub retry_interval_ms: u64,
    /// 0: [`DEFAULT_STALL_TIMEOUT_MS`].
    pub stall_timeout_ms: u64,
    /// A CSV source without rows is copied (to an output with its columns) instead of failing.
    pub allow_empty: bool,
    /// The CSV source's text encoding: `utf-8`, `latin1`, `windows-1252`; empty: UTF-8.
    pub encoding: String,
    /// `overwrite`, `fail`, `skip`; empty: overwrite.
    pub if_exists: String,
    /// A CSV source's column types: `infer` or `text`; empty: infer.
    pub schema: String,
    /// Values of a CSV source's fields that mean null (`--csv-null`, repeatable or a comma list).
    pub csv_nulls: Vec<String>,
    /// The text of a `--schema FILE` (read by the CLI): the CSV source's column types.
    pub schema_columns: String,
    /// strftime formats of a CSV source's timestamps and dates; empty: ISO 8601.
    pub timestamp_format: String,
    pub date_format: String,
    /// `--columns 'a,b,c'`: source columns to copy, in order; empty: all.
    pub columns: String,
    /// `--rename old=new`, each.
    pub renames: Vec<String>,
    /// `fail` or `skip`; empty: fail.
    pub on_bad_row: String,
    /// `--bad-rows LINKED_SERVICE:/folder/`: where skipped rows go.
    pub bad_rows: String,
}

/// Which end of the job a dataset is; flags and messages are named after it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Source,
    Sink,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Sink => "sink",
        }
    }
}

impl Submission {
    /// Checks the submission and reads it into a spec. `kind_of` gives the type of the
    /// linked service of that name, `None` if there is none.
    pub fn parse(self, kind_of: impl Fn(&str) -> Option<ServiceType>) -> Result<JobSpec, InvalidSpec> {
        let delimiter = match self.csv_delimiter.as_bytes() {
            [] => b',',
            [one] if one.is_ascii() && *one != b'\n' && *one != b'\r' && *one != b'"' => *one,
            _ => {
                return Err(invalid(
                    "--csv-delimiter takes one ASCII character (not a quote or a line break)",
                ));
            }
        };
        let encoding = match self.encoding.to_ascii_lowercase().as_str() {
            "" | "utf-8" | "utf8" => Encoding::Utf8,
            "latin1" | "latin-1" | "iso-8859-1" => Encoding::Latin1,
            "windows-1252" | "cp1252" => Encoding::Windows1252,
            other => {
                return Err(invalid(format!(
                    "--encoding '{other}' is not one of utf-8, latin1, windows-1252"
                )));
            }
        };
        let schema = match (self.schema.to_ascii_lowercase().as_str(), self.schema_columns.as_str()) {
            ("" | "infer", "") => SchemaMode::Infer,
            ("text", "") => SchemaMode::Text,
            ("", given) => SchemaMode::Given(
                super::schema::parse_schema(given).map_err(|why| invalid(format!("--schema: {why}")))?,
            ),
            (other, "") => {
                return Err(invalid(format!(
                    "--schema '{other}' is not infer, text or a schema file"
                )));
            }
            (mode, _) => return Err(invalid(format!("--schema {mode} and a schema file: give one"))),
        };
        let csv = CsvOptions {
            header: !self.csv_no_header,
            delimiter,
            quote: b'"',
            allow_empty: self.allow_empty,
            encoding,
            schema,
            nulls: null_markers(&self.csv_nulls)?,
            timestamp_format: (!self.timestamp_format.is_empty()).then(|| self.timestamp_format.clone()),
            date_format: (!self.date_format.is_empty()).then(|| self.date_format.clone()),
        };
        let zoned = match &csv.timestamp_format {
            Some(f) => Some(
                super::schema::check_timestamp_format(f).map_err(|why| invalid(format!("--timestamp-format {why}")))?,
            ),
            None => None,
        };
        if let Some(f) = &csv.date_format {
            super::schema::check_date_format(f).map_err(|why| invalid(format!("--date-format {why}")))?;
        }
        let if_exists = match self.if_exists.to_ascii_lowercase().as_str() {
            "" | "overwrite" => IfExists::Overwrite,
            "fail" => IfExists::Fail,
            "skip" => IfExists::Skip,
            other => {
                return Err(invalid(format!(
                    "--if-exists '{other}' is not one of overwrite, fail, skip"
                )));
            }
        };
        let source = self.dataset(Role::Source, &kind_of, &csv)?;
        let sink = self.dataset(Role::Sink, &kind_of, &csv)?;
        let csv_source = matches!(source.format, Format::Csv(_)) && matches!(source.location, Location::Path(_));
        if !csv.nulls.is_empty() && !csv_source {
            return Err(invalid(format!(
                "--csv-null applies to CSV sources; {} is not one",
                source.describe()
            )));
        }
        let formats = [
            ("--timestamp-format", csv.timestamp_format.is_some()),
            ("--date-format", csv.date_format.is_some()),
        ];
        for (flag, _) in formats.iter().filter(|(_, given)| *given) {
            if !csv_source || !stores_types(&sink, &kind_of) || csv.schema == SchemaMode::Text {
                return Err(invalid(format!(
                    "{flag} applies to a CSV source typed for a Parquet or JSON Lines sink; {} to {}{} copies text",
                    source.describe(),
                    sink.describe(),
                    if csv.schema == SchemaMode::Text {
                        " with --schema text"
                    } else {
                        ""
                    }
                )));
            }
        }
        if let (SchemaMode::Given(columns), Some(zoned)) = (&csv.schema, zoned) {
            let clash = columns.iter().find(|c| match c.column_type {
                super::ColumnType::Timestamp => zoned,
                super::ColumnType::TimestampTz => !zoned,
                _ => false,
            });
            if let Some(c) = clash {
                let (kind, has) = if zoned {
                    ("timestamp (without a zone)", "has an offset (%z)")
                } else {
                    ("timestamptz", "has no offset (%z)")
                };
                return Err(invalid(format!(
                    "--schema makes '{}' a {kind} but --timestamp-format {has}",
                    c.name
                )));
            }
        }
        if let SchemaMode::Given(_) = csv.schema {
            if !csv_source {
                return Err(invalid(format!(
                    "--schema FILE types the columns of a CSV source; {} keeps its own types",
                    source.describe()
                )));
            }
            if !stores_types(&sink, &kind_of) {
                return Err(invalid(format!(
                    "--schema FILE types columns for a Parquet or JSON Lines sink; {} takes the text as it is",
                    sink.describe()
                )));
            }
        }
        refuse_overlap(&source, &sink)?;
        if if_exists != IfExists::Overwrite && !matches!(sink.location, Location::Path(_)) {
            return Err(invalid(format!(
                "--if-exists {} applies to file sinks; rows copied to the table {} are added to it",
                if_exists.as_str(),
                sink.describe()
            )));
        }
        let mapping = column_mapping(&self.columns, &self.renames, &csv.schema)?;
        if !mapping.is_identity() && self.binary {
            return Err(invalid(
                "--columns and --rename apply to tables; --binary copies files as they are",
            ));
        }
        let bad_rows = self.bad_rows(&kind_of, &source)?;
        let retry = match (self.max_attempts, self.retry_interval_ms) {
            (0, 0) => RetryPolicy::default(),
            (0, interval_ms) => RetryPolicy {
                interval_ms,
                ..RetryPolicy::default()
            },
            (n, interval_ms) if n <= 100 => RetryPolicy {
                max_attempts: n,
                interval_ms: if interval_ms == 0 && self.retry_interval_ms == 0 {
                    RetryPolicy::default().interval_ms
                } else {
                    interval_ms
                },
            },
            (n, _) => return Err(invalid(format!("--max-attempts {n} is more than 100"))),
        };
        let stall_timeout_ms = match self.stall_timeout_ms {
            0 => DEFAULT_STALL_TIMEOUT_MS,
            ms if (1_000..=86_400_000).contains(&ms) => ms,
            _ => return Err(invalid("--stall-timeout must be between 1 and 86400 seconds")),
        };
        Ok(JobSpec {
            name: self.name,
            source,
            sink,
            retry,
            stall_timeout_ms,
            if_exists,
            mapping,
            bad_rows,
        })
    }

    /// `--on-bad-row` and `--bad-rows`: skipping needs a folder on a share for the rejects
    /// file (rows must not vanish unrecorded), and a folder is only for skipping.
    fn bad_rows(
        &self,
        kind_of: &impl Fn(&str) -> Option<ServiceType>,
        source: &DatasetRef,
    ) -> Result<Option<BadRows>, InvalidSpec> {
        let skip = match self.on_bad_row.to_ascii_lowercase().as_str() {
            "" | "fail" => false,
            "skip" => true,
            other => return Err(invalid(format!("--on-bad-row '{other}' is not fail or skip"))),
        };
        let folder = self.bad_rows.trim();
        match (skip, folder.is_empty()) {
            (false, true) => return Ok(None),
            (false, false) => {
                return Err(invalid(
                    "--bad-rows is where --on-bad-row skip puts rejected rows: give --on-bad-row skip too",
                ));
            }
            (true, true) => {
                return Err(invalid(
                    "--on-bad-row skip needs --bad-rows LINKED_SERVICE:/folder/ for the rejects file",
                ));
            }
            (true, false) => {}
        }
        let csv_source = matches!(source.format, Format::Csv(_)) && matches!(source.location, Location::Path(_));
        if !csv_source || self.binary {
            return Err(invalid(format!(
                "--on-bad-row skip applies to CSV sources; {} is not one",
                source.describe()
            )));
        }
        let (service, path) = folder
            .split_once(':')
            .ok_or_else(|| invalid(format!("--bad-rows '{folder}' is not LINKED_SERVICE:/folder/")))?;
        match kind_of(service) {
            None => return Err(invalid(format!("--bad-rows: no linked service named '{service}'"))),
            Some(ServiceType::Filesystem) => {}
            Some(other) => {
                return Err(invalid(format!(
                    "--bad-rows: '{service}' is a {} linked service; the rejects file goes to a file share",
                    other.as_str()
                )));
            }
        }
        let path = path.trim_start_matches('/').trim_end_matches('/');
        let rel = RelPath::parse(service, path).map_err(|why| invalid(format!("--bad-rows: {why}")))?;
        if rel.has_wildcard() {
            return Err(invalid(format!(
                "--bad-rows: {service}:{path}: names one folder, without wildcards"
            )));
        }
        Ok(Some(BadRows {
            service: service.to_string(),
            folder: path.to_string(),
        }))
    }

    /// Parses `LINKED_SERVICE:PATH`, `LINKED_SERVICE:SCHEMA.TABLE` or `LINKED_SERVICE:QUERY`
    /// against the linked service's type.
    fn dataset(
        &self,
        role: Role,
        kind_of: &impl Fn(&str) -> Option<ServiceType>,
        csv: &CsvOptions,
    ) -> Result<DatasetRef, InvalidSpec> {
        let (text, flag) = match role {
            Role::Source => (&self.source, &self.source_format),
            Role::Sink => (&self.sink, &self.sink_format),
        };
        let role_name = role.as_str();
        let (service, rest) = text.split_once(':').ok_or_else(|| {
            invalid(format!(
                "--{role_name} '{text}' is not LINKED_SERVICE:PATH, :TABLE or :QUERY"
            ))
        })?;
        let kind =
            kind_of(service).ok_or_else(|| invalid(format!("--{role_name}: no linked service named '{service}'")))?;
        let rest = rest.trim();
        if rest.is_empty() {
            return Err(invalid(format!(
                "--{role_name} '{text}' names no path, table or query after the ':'"
            )));
        }
        match kind {
            ServiceType::Filesystem | ServiceType::S3 | ServiceType::AzureBlob | ServiceType::Gcs => {
                // Paths are under the service's root (a bucket's or container's top, for an
                // object store); a leading '/' means the root itself.
                let path = rest.trim_start_matches('/');
                // The worker's own rule, so that a path it would refuse never enters the log.
                let checked = match role {
                    Role::Sink if !self.binary => paths::check_sink_file(service, path),
                    _ => RelPath::parse(service, path),
                };
                checked.map_err(|why| invalid(format!("--{role_name}: {why}")))?;
                let format = if self.binary {
                    Format::Binary
                } else {
                    file_format(flag, path, csv, role_name)?
                };
                Ok(DatasetRef {
                    service: service.to_string(),
                    location: Location::Path(path.to_string()),
                    format,
                })
            }
            ServiceType::Postgres => {
                if !flag.is_empty() {
                    return Err(invalid(format!(
                        "--{role_name}-format applies to files; '{service}' is a PostgreSQL linked service"
                    )));
                }
                if self.binary {
                    return Err(invalid(
                        "--binary copies files: both ends must be file shares or object stores",
                    ));
                }
                let named = names::parse_table(rest).map_err(|why| invalid(format!("--{role_name}: {why}")))?;
                let location = match named {
                    Named::Table { schema, table } => Location::Table { schema, table },
                    Named::NotAName if role == Role::Sink => {
                        return Err(invalid(format!(
                            "--sink '{text}': a sink is a table, SCHEMA.TABLE or TABLE (quote names with capitals, spaces or dots: \"Sales\".\"Order Items\"); a query can only be a source"
                        )));
                    }
                    Named::NotAName => Location::Query(rest.to_string()),
                };
                Ok(DatasetRef {
                    service: service.to_string(),
                    location,
                    format: Format::Csv(csv.clone()),
                })
            }
            ServiceType::Http => Err(invalid(format!(
                "--{role_name}: linked service '{service}' is of type http, which copy jobs cannot use yet"
            ))),
        }
    }
}

/// Whether a sink keeps column types (Parquet, JSON Lines files): a CSV file is text, and a
/// PostgreSQL table converts text to its own columns' types.
fn stores_types(sink: &DatasetRef, kind_of: &impl Fn(&str) -> Option<ServiceType>) -> bool {
    let files = kind_of(&sink.service).is_some_and(|k| k.holds_files());
    files && matches!(sink.format, Format::Parquet | Format::JsonLines)
}

/// `--columns` and `--rename` read and checked as far as they can be before the source's
/// columns are known: names given twice, and output names that clash among the columns
/// named here (or, with a schema file, among the file's columns).
fn column_mapping(columns: &str, renames: &[String], schema: &SchemaMode) -> Result<ColumnMapping, InvalidSpec> {
    let mut select: Vec<String> = Vec::new();
    if !columns.trim().is_empty() {
        for name in columns.split(',').map(str::trim) {
            if name.is_empty() {
                return Err(invalid(format!("--columns '{columns}' has an empty name")));
            }
            if select.iter().any(|s| s == name) {
                return Err(invalid(format!("--columns names '{name}' twice")));
            }
            select.push(name.to_string());
        }
    }
    let mut rename: Vec<(String, String)> = Vec::new();
    for given in renames {
        let Some((from, to)) = given.split_once('=').map(|(f, t)| (f.trim(), t.trim())) else {
            return Err(invalid(format!("--rename '{given}' is not OLD=NEW")));
        };
        if from.is_empty() || to.is_empty() {
            return Err(invalid(format!("--rename '{given}' is not OLD=NEW")));
        }
        if rename.iter().any(|(f, _)| f == from) {
            return Err(invalid(format!("--rename renames '{from}' twice")));
        }
        if !select.is_empty() && !select.iter().any(|s| s == from) {
            return Err(invalid(format!(
                "--rename {from}={to}: '{from}' is not among --columns"
            )));
        }
        rename.push((from.to_string(), to.to_string()));
    }
    let mapping = ColumnMapping { select, rename };
    // The source's names, where they are known before the copy opens it.
    let known: Vec<String> = match schema {
        SchemaMode::Given(columns) => columns.iter().map(|c| c.name.clone()).collect(),
        _ => Vec::new(),
    };
    if !known.is_empty()
        && let Some(absent) = mapping.select.iter().find(|s| !known.contains(s))
    {
        return Err(invalid(format!(
            "--columns names '{absent}', which --schema does not (a schema names every column of the file)"
        )));
    }
    let sources: Vec<&str> = if !mapping.select.is_empty() {
        mapping.select.iter().map(String::as_str).collect()
    } else if !known.is_empty() {
        known.iter().map(String::as_str).collect()
    } else {
        mapping.rename.iter().map(|(from, _)| from.as_str()).collect()
    };
    let mut outputs: Vec<&str> = Vec::new();
    for source in sources {
        let output = mapping.output_name(source);
        if outputs.contains(&output) {
            let cause = mapping
                .rename
                .iter()
                .find(|(f, t)| t == output && f == source)
                .or_else(|| mapping.rename.iter().find(|(_, t)| t == output))
                .map_or(String::new(), |(f, t)| format!("--rename {f}={t}: "));
            return Err(invalid(format!("{cause}two columns would be named '{output}'")));
        }
        outputs.push(output);
    }
    Ok(mapping)
}

/// `--csv-null` values, each given on its own or several in a comma list, in order and
/// without repeats. An empty one is refused: empty fields are nulls already.
fn null_markers(given: &[String]) -> Result<Vec<String>, InvalidSpec> {
    let mut markers: Vec<String> = Vec::new();
    for marker in given.iter().flat_map(|g| g.split(',')) {
        if marker.is_empty() {
            return Err(invalid("--csv-null '' names no value: empty fields are nulls already"));
        }
        if !markers.iter().any(|m| m == marker) {
            markers.push(marker.to_string());
        }
    }
    Ok(markers)
}

/// Refuses a job that would write what it reads: the same table, the same file, or a file
/// inside the directory or glob the source reads (a copy would read its own output, or
/// rewrite its input in place).
fn refuse_overlap(source: &DatasetRef, sink: &DatasetRef) -> Result<(), InvalidSpec> {
    if source.service != sink.service {
        return Ok(());
    }
    let clash = match (&source.location, &sink.location) {
        (Location::Table { .. }, Location::Table { .. }) => source.location == sink.location,
        (Location::Path(from), Location::Path(to)) => {
            // Both were checked when they were read; an error here cannot happen.
            match (RelPath::parse(&source.service, from), RelPath::parse(&sink.service, to)) {
                (Ok(from), Ok(to)) => paths::overlaps(&from, &to, source.format == Format::Binary),
                _ => false,
            }
        }
        _ => false,
    };
    if clash {
        return Err(invalid(format!(
            "--sink {} would overwrite what --source {} reads: write somewhere else",
            sink.describe(),
            source.describe()
        )));
    }
    Ok(())
}

/// `csv`, `jsonl`, `parquet` from a flag, or from the file name's extension.
fn file_format(flag: &str, path: &str, csv: &CsvOptions, role: &str) -> Result<Format, InvalidSpec> {
    let name = if flag.is_empty() {
        let ext = path
            .rsplit('/')
            .next()
            .unwrap_or("")
            .rsplit_once('.')
            .map(|(_, e)| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some(e) => e.to_string(),
            None => {
                return Err(invalid(format!(
                    "cannot tell the {role} format from '{path}': give --{role}-format csv, jsonl or parquet (or --binary)"
                )));
            }
        }
    } else {
        flag.to_ascii_lowercase()
    };
    match name.as_str() {
        "csv" | "txt" => Ok(Format::Csv(csv.clone())),
        // A .tsv is tab-separated unless a delimiter was given.
        "tsv" if csv.delimiter == b',' => Ok(Format::Csv(CsvOptions {
            delimiter: b'\t',
            ..csv.clone()
        })),
        "tsv" => Ok(Format::Csv(csv.clone())),
        "jsonl" | "ndjson" | "json" => Ok(Format::JsonLines),
        "parquet" => Ok(Format::Parquet),
        other => Err(invalid(format!(
            "unknown {role} format '{other}': use csv, jsonl or parquet (or --binary for files as they are)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(name: &str) -> Option<ServiceType> {
        match name {
            "share" => Some(ServiceType::Filesystem),
            "db" => Some(ServiceType::Postgres),
            "web" => Some(ServiceType::Http),
            _ => None,
        }
    }

    fn submit(source: &str, sink: &str) -> Submission {
        Submission {
            source: source.into(),
            sink: sink.into(),
            ..Submission::default()
        }
    }

    #[test]
    fn formats_come_from_flags_or_extensions() {
        let spec = submit("share:/in/orders.TSV", "db:Sales.orders").parse(kinds).unwrap();
        let tab = CsvOptions {
            delimiter: b'\t',
            ..CsvOptions::default()
        };
        assert_eq!(spec.source.format, Format::Csv(tab));
        assert_eq!(spec.source.location, Location::Path("in/orders.TSV".into()));
        assert_eq!(
            spec.sink.location,
            Location::Table {
                schema: "sales".into(),
                table: "orders".into()
            }
        );
        let spec = Submission {
            sink_format: "parquet".into(),
            ..submit("db:select 1", "share:/out/x")
        }
        .parse(kinds)
        .unwrap();
        assert_eq!(spec.source.location, Location::Query("select 1".into()));
        assert_eq!(spec.sink.format, Format::Parquet);
        assert_eq!(spec.retry, RetryPolicy::default());
        assert_eq!(spec.stall_timeout_ms, DEFAULT_STALL_TIMEOUT_MS);
    }

    #[test]
    fn bad_submissions_name_the_flag() {
        let cases = [
            (
                submit("share", "share:/b.csv"),
                "--source 'share' is not LINKED_SERVICE:PATH",
            ),
            (
                submit("nope:/a.csv", "share:/b.csv"),
                "--source: no linked service named 'nope'",
            ),
            (submit("share:/a", "share:/b.csv"), "cannot tell the source format"),
            (submit("share:/a.csv", "db:select 1"), "a query can only be a source"),
            (submit("web:/a.csv", "share:/b.csv"), "of type http"),
            (
                Submission {
                    binary: true,
                    ..submit("share:/a", "db:t")
                },
                "--binary copies files",
            ),
            (
                Submission {
                    csv_delimiter: "\"".into(),
                    ..submit("share:/a.csv", "share:/b.csv")
                },
                "--csv-delimiter",
            ),
            (
                Submission {
                    max_attempts: 101,
                    ..submit("share:/a.csv", "share:/b.csv")
                },
                "more than 100",
            ),
            (
                Submission {
                    stall_timeout_ms: 10,
                    ..submit("share:/a.csv", "share:/b.csv")
                },
                "--stall-timeout",
            ),
        ];
        for (submission, expected) in cases {
            let err = submission.parse(kinds).expect_err(expected);
            assert!(err.0.contains(expected), "{err}");
        }
    }

    #[test]
    fn paths_are_checked_with_the_workers_words_before_the_format() {
        let cases = [
            (
                submit("share:/in/a.csv", "share:/out/../../etc/x.csv"),
                "--sink: share:out/../../etc/x.csv: the path leaves the linked service's root ('..' is not allowed)",
            ),
            (
                submit("share:/../../etc/x", "share:/out/x.csv"),
                "--source: share:../../etc/x: the path leaves the linked service's root ('..' is not allowed)",
            ),
            (
                submit("share:/in/a.csv", "share:/out/"),
                "--sink: share:out/: names a directory; a table is written to one file, so give its name",
            ),
            (
                submit("share:/in/a.csv", "share:/out/*.csv"),
                "--sink: share:out/*.csv: a sink path cannot hold wildcards",
            ),
        ];
        for (submission, expected) in cases {
            assert_eq!(submission.parse(kinds).unwrap_err().0, expected);
        }
    }

    #[test]
    fn a_sink_that_is_or_lies_in_the_source_is_refused() {
        for (source, sink) in [
            ("share:/in/a.csv", "share:/in/a.csv"),
            ("share:/in/", "share:/in/all.csv"),
            ("share:in/*.csv", "share:/in/all.csv"),
            ("db:public.t", "db:t"),
        ] {
            let submission = Submission {
                source_format: if source.starts_with("share") { "csv" } else { "" }.into(),
                ..submit(source, sink)
            };
            let err = submission.parse(kinds).unwrap_err();
            assert!(
                err.0.contains("would overwrite what --source"),
                "{source} {sink}: {err}"
            );
        }
        let binary = Submission {
            binary: true,
            ..submit("share:/in/", "share:/in/copy/")
        };
        assert!(binary.parse(kinds).is_err());
        for (source, sink) in [
            ("share:/in/a.csv", "share:/out/a.csv"),
            ("share:/in/*.csv", "share:/in/all.parquet"),
            ("db:public.t", "db:public.u"),
        ] {
            submit(source, sink).parse(kinds).unwrap();
        }
    }

    #[test]
    fn encodings_are_named_or_refused() {
        let with = |encoding: &str| Submission {
            encoding: encoding.into(),
            allow_empty: true,
            ..submit("share:/in/a.csv", "share:/out/a.csv")
        };
        let Format::Csv(options) = with("LATIN1").parse(kinds).unwrap().source.format else {
            panic!("a csv source")
        };
        assert_eq!(options.encoding, Encoding::Latin1);
        assert!(options.allow_empty);
        let err = with("ebcdic").parse(kinds).unwrap_err();
        assert_eq!(err.0, "--encoding 'ebcdic' is not one of utf-8, latin1, windows-1252");
    }

    #[test]
    fn if_exists_is_named_or_refused_and_only_for_file_sinks() {
        let with = |sink: &str, if_exists: &str| Submission {
            if_exists: if_exists.into(),
            ..submit("share:/in/a.csv", sink)
        };
        assert_eq!(
            with("share:/out/a.csv", "").parse(kinds).unwrap().if_exists,
            IfExists::Overwrite
        );
        assert_eq!(
            with("share:/out/a.csv", "Fail").parse(kinds).unwrap().if_exists,
            IfExists::Fail
        );
        assert_eq!(
            with("share:/out/a.csv", "skip").parse(kinds).unwrap().if_exists,
            IfExists::Skip
        );
        assert_eq!(
            with("share:/out/a.csv", "append").parse(kinds).unwrap_err().0,
            "--if-exists 'append' is not one of overwrite, fail, skip"
        );
        assert_eq!(
            with("db:public.t", "skip").parse(kinds).unwrap_err().0,
            "--if-exists skip applies to file sinks; rows copied to the table db:public.t are added to it"
        );
        with("db:public.t", "overwrite").parse(kinds).unwrap();
    }

    #[test]
    fn schema_modes_are_named_or_refused() {
        let with = |schema: &str| Submission {
            schema: schema.into(),
            ..submit("share:/in/a.csv", "share:/out/a.parquet")
        };
        let mode = |spec: JobSpec| match spec.source.format {
            Format::Csv(options) => options.schema,
            other => panic!("a csv source, not {other:?}"),
        };
        assert_eq!(mode(with("").parse(kinds).unwrap()), SchemaMode::Infer);
        assert_eq!(mode(with("TEXT").parse(kinds).unwrap()), SchemaMode::Text);
        assert_eq!(
            with("guess").parse(kinds).unwrap_err().0,
            "--schema 'guess' is not infer, text or a schema file"
        );
        // A spec stored before inference existed keeps copying text.
        let old = r#"{"header":true,"delimiter":44,"quote":34}"#;
        let options: CsvOptions = serde_json::from_str(old).unwrap();
        assert_eq!(options.schema, SchemaMode::Text);
    }

    #[test]
    fn a_schema_file_is_parsed_at_submit_and_only_for_csv_to_typed_sinks() {
        let with = |source: &str, sink: &str, columns: &str| Submission {
            schema_columns: columns.into(),
            ..submit(source, sink)
        };
        let spec = with(
            "share:/in/a.csv",
            "share:/out/a.parquet",
            "id:int64,amount:decimal(12,2)",
        )
        .parse(kinds)
        .unwrap();
        let Format::Csv(options) = spec.source.format else {
            panic!("a csv source")
        };
        assert_eq!(
            options.schema,
            SchemaMode::Given(vec![
                super::super::NamedColumn {
                    name: "id".into(),
                    column_type: super::super::ColumnType::Int64
                },
                super::super::NamedColumn {
                    name: "amount".into(),
                    column_type: super::super::ColumnType::Decimal {
                        precision: 12,
                        scale: 2
                    }
                },
            ])
        );
        let refused = [
            (
                with("share:/in/a.csv", "share:/out/a.parquet", "id:money"),
                "--schema: column 'id': 'money' is not a type (int64, float64, boolean, date, timestamp, timestamptz, decimal(P,S), text)",
            ),
            (
                with("share:/in/a.csv", "share:/out/a.csv", "id:int64"),
                "--schema FILE types columns for a Parquet or JSON Lines sink; share:/out/a.csv takes the text as it is",
            ),
            (
                with("share:/in/a.csv", "db:public.t", "id:int64"),
                "--schema FILE types columns for a Parquet or JSON Lines sink; db:public.t takes the text as it is",
            ),
            (
                with("db:public.t", "share:/out/a.parquet", "id:int64"),
                "--schema FILE types the columns of a CSV source; db:public.t keeps its own types",
            ),
            (
                Submission {
                    schema: "text".into(),
                    ..with("share:/in/a.csv", "share:/out/a.parquet", "id:int64")
                },
                "--schema text and a schema file: give one",
            ),
        ];
        for (submission, expected) in refused {
            assert_eq!(submission.parse(kinds).unwrap_err().0, expected);
        }
    }

    #[test]
    fn time_formats_are_checked_at_submit() {
        let with = |sink: &str, timestamp: &str, date: &str| Submission {
            timestamp_format: timestamp.into(),
            date_format: date.into(),
            ..submit("share:/in/a.csv", sink)
        };
        let Format::Csv(options) = with("share:/out/a.parquet", "%d/%m/%Y %H:%M", "%d/%m/%Y")
            .parse(kinds)
            .unwrap()
            .source
            .format
        else {
            panic!("a csv source")
        };
        assert_eq!(options.timestamp_format.as_deref(), Some("%d/%m/%Y %H:%M"));
        assert_eq!(options.date_format.as_deref(), Some("%d/%m/%Y"));
        let refused = [
            (
                with("share:/out/a.parquet", "%d/%m/%Y %Q", ""),
                "--timestamp-format '%d/%m/%Y %Q' is not a strftime format (a '%' names no field chrono knows)",
            ),
            (
                with("share:/out/a.parquet", "", "%m/%Y"),
                "--date-format '%m/%Y' does not read back the date it writes",
            ),
            (
                with("share:/out/a.csv", "%d/%m/%Y %H:%M", ""),
                "--timestamp-format applies to a CSV source typed for a Parquet or JSON Lines sink; share:/in/a.csv to share:/out/a.csv copies text",
            ),
            (
                Submission {
                    schema: "text".into(),
                    ..with("share:/out/a.parquet", "", "%d/%m/%Y")
                },
                "--date-format applies to a CSV source typed for a Parquet or JSON Lines sink; share:/in/a.csv to share:/out/a.parquet with --schema text copies text",
            ),
            (
                Submission {
                    schema_columns: "at:timestamptz".into(),
                    ..with("share:/out/a.parquet", "%d/%m/%Y %H:%M", "")
                },
                "--schema makes 'at' a timestamptz but --timestamp-format has no offset (%z)",
            ),
        ];
        for (submission, expected) in refused {
            let e = submission.parse(kinds).unwrap_err().0;
            assert!(e.starts_with(expected), "{e}");
        }
    }

    #[test]
    fn columns_and_renames_are_checked_as_far_as_names_are_known() {
        let with = |columns: &str, renames: &[&str], schema: &str| Submission {
            columns: columns.into(),
            renames: renames.iter().map(|r| r.to_string()).collect(),
            schema_columns: schema.into(),
            ..submit("share:/in/a.csv", "share:/out/a.parquet")
        };
        let spec = with(" c, a ", &["a = id"], "").parse(kinds).unwrap();
        assert_eq!(
            spec.mapping,
            ColumnMapping {
                select: vec!["c".into(), "a".into()],
                rename: vec![("a".into(), "id".into())],
            }
        );
        assert!(with("", &[], "").parse(kinds).unwrap().mapping.is_identity());
        let refused = [
            (with("a,,b", &[], ""), "--columns 'a,,b' has an empty name"),
            (with("a,b,a", &[], ""), "--columns names 'a' twice"),
            (with("", &["a"], ""), "--rename 'a' is not OLD=NEW"),
            (with("", &["a="], ""), "--rename 'a=' is not OLD=NEW"),
            (with("", &["a=x", "a=y"], ""), "--rename renames 'a' twice"),
            (with("a,b", &["c=x"], ""), "--rename c=x: 'c' is not among --columns"),
            (
                with("a,b", &["b=a"], ""),
                "--rename b=a: two columns would be named 'a'",
            ),
            (
                with("", &["a=x", "b=x"], ""),
                "--rename b=x: two columns would be named 'x'",
            ),
            (
                with("", &["b=a"], "a:int64,b:text"),
                "--rename b=a: two columns would be named 'a'",
            ),
            (
                with("a,z", &[], "a:int64,b:text"),
                "--columns names 'z', which --schema does not (a schema names every column of the file)",
            ),
            (
                Submission {
                    binary: true,
                    ..with("a", &[], "")
                },
                "--columns and --rename apply to tables; --binary copies files as they are",
            ),
        ];
        for (submission, expected) in refused {
            assert_eq!(submission.parse(kinds).unwrap_err().0, expected);
        }
    }

    #[test]
    fn bad_rows_go_to_a_folder_on_a_share_and_only_when_skipped() {
        let with = |source: &str, on_bad_row: &str, bad_rows: &str| Submission {
            on_bad_row: on_bad_row.into(),
            bad_rows: bad_rows.into(),
            ..submit(source, "share:/out/a.parquet")
        };
        let spec = with("share:/in/a.csv", "skip", "share:/errors/").parse(kinds).unwrap();
        let bad = spec.bad_rows.unwrap();
        assert_eq!(bad.folder, "errors");
        assert_eq!(bad.describe("ab12"), "share:/errors/ab12.rejects.jsonl");
        let root = with("share:/in/a.csv", "SKIP", "share:/").parse(kinds).unwrap();
        assert_eq!(root.bad_rows.unwrap().file("ab12"), "ab12.rejects.jsonl");
        assert_eq!(with("share:/in/a.csv", "fail", "").parse(kinds).unwrap().bad_rows, None);
        let refused = [
            (
                with("share:/in/a.csv", "drop", ""),
                "--on-bad-row 'drop' is not fail or skip",
            ),
            (
                with("share:/in/a.csv", "", "share:/errors/"),
                "--bad-rows is where --on-bad-row skip puts rejected rows: give --on-bad-row skip too",
            ),
            (
                with("share:/in/a.csv", "fail", "share:/errors/"),
                "--bad-rows is where --on-bad-row skip puts rejected rows: give --on-bad-row skip too",
            ),
            (
                with("share:/in/a.csv", "skip", ""),
                "--on-bad-row skip needs --bad-rows LINKED_SERVICE:/folder/ for the rejects file",
            ),
            (
                with("share:/in/a.csv", "skip", "db:errors"),
                "--bad-rows: 'db' is a postgres linked service; the rejects file goes to a file share",
            ),
            (
                with("share:/in/a.csv", "skip", "nope:/errors/"),
                "--bad-rows: no linked service named 'nope'",
            ),
            (
                with("share:/in/a.csv", "skip", "share:/../errors/"),
                "--bad-rows: share:../errors: the path leaves the linked service's root ('..' is not allowed)",
            ),
            (
                with("share:/in/a.csv", "skip", "share:/err*/"),
                "--bad-rows: share:err*: names one folder, without wildcards",
            ),
            (
                with("share:/in/a.parquet", "skip", "share:/errors/"),
                "--on-bad-row skip applies to CSV sources; share:/in/a.parquet is not one",
            ),
            (
                with("db:public.t", "skip", "share:/errors/"),
                "--on-bad-row skip applies to CSV sources; db:public.t is not one",
            ),
        ];
        for (submission, expected) in refused {
            assert_eq!(submission.parse(kinds).unwrap_err().0, expected);
        }
    }

    #[test]
    fn null_markers_are_listed_once_and_only_for_csv_sources() {
        let with = |source: &str, nulls: &[&str]| Submission {
            csv_nulls: nulls.iter().map(|n| n.to_string()).collect(),
            ..submit(source, "share:/out/a.parquet")
        };
        let Format::Csv(options) = with("share:/in/a.csv", &["NULL,\\N", "NA", "NULL"])
            .parse(kinds)
            .unwrap()
            .source
            .format
        else {
            panic!("a csv source")
        };
        assert_eq!(options.nulls, ["NULL", "\\N", "NA"]);
        assert_eq!(
            with("share:/in/a.csv", &["NULL,"]).parse(kinds).unwrap_err().0,
            "--csv-null '' names no value: empty fields are nulls already"
        );
        assert_eq!(
            with("share:/in/a.parquet", &["NA"]).parse(kinds).unwrap_err().0,
            "--csv-null applies to CSV sources; share:/in/a.parquet is not one"
        );
        assert_eq!(
            with("db:public.t", &["NA"]).parse(kinds).unwrap_err().0,
            "--csv-null applies to CSV sources; db:public.t is not one"
        );
    }

    #[test]
    fn a_dataset_reads_back_as_it_was_given() {
        let spec = submit("db:\"Sales\".\"Order Items\"", "share:/out/x.csv")
            .parse(kinds)
            .unwrap();
        assert_eq!(spec.source.describe(), "db:\"Sales\".\"Order Items\"");
        assert_eq!(spec.sink.describe(), "share:/out/x.csv");
    }
}
