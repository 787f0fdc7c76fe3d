//! An operator's job submission read into a [`JobSpec`]: the datasets against their linked
//! services' types, the formats from flags or file extensions, the CSV options, the retry
//! policy and the stall timeout; what a table copy does to its columns is checked in
//! `columns`. Every refusal is one line naming the flag at fault.

use super::columns;
use super::names::{self, Named};
use super::paths::{self, RelPath};
use super::{
    CsvOptions, DEFAULT_STALL_TIMEOUT_MS, DatasetRef, Encoding, Format, IfExists, JobSpec, Location, RetryPolicy,
};
use crate::connectors::ServiceType;

/// A submission refused: the line says which flag is wrong and what it takes instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

pub(super) fn invalid(why: impl Into<String>) -> InvalidSpec {
    InvalidSpec(why.into())
}

/// A job as `shir job submit` gives it, before anything is checked. Empty strings and zeros
/// mean "the default", as on the wire. A schedule keeps one as its runs' template.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
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
    /// A missing PostgreSQL sink table is made from the source's columns.
    pub create_table: bool,
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
        let schema = columns::schema_mode(&self.schema, &self.schema_columns)?;
        let csv = CsvOptions {
            header: !self.csv_no_header,
            delimiter,
            quote: b'"',
            allow_empty: self.allow_empty,
            encoding,
            schema,
            nulls: columns::null_markers(&self.csv_nulls)?,
            timestamp_format: (!self.timestamp_format.is_empty()).then(|| self.timestamp_format.clone()),
            date_format: (!self.date_format.is_empty()).then(|| self.date_format.clone()),
        };
        let zoned = columns::check_formats(&csv)?;
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
        columns::check_typing(&csv, zoned, &source, &sink, &kind_of)?;
        refuse_overlap(&source, &sink)?;
        if if_exists != IfExists::Overwrite && !matches!(sink.location, Location::Path(_)) {
            return Err(invalid(format!(
                "--if-exists {} applies to file sinks; rows copied to the table {} are added to it",
                if_exists.as_str(),
                sink.describe()
            )));
        }
        if self.create_table && !matches!(sink.location, Location::Table { .. }) {
            return Err(invalid(format!(
                "--create-table makes PostgreSQL tables; the sink {} is not one",
                sink.describe()
            )));
        }
        let mapping = columns::column_mapping(&self.columns, &self.renames, &csv.schema, self.binary)?;
        let bad_rows = columns::bad_rows(&self.on_bad_row, &self.bad_rows, self.binary, &kind_of, &source)?;
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
            create_table: self.create_table,
            mapping,
            bad_rows,
        })
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
pub(super) mod tests {
    use super::*;
    use crate::job_spec::SchemaMode;

    pub(crate) fn kinds(name: &str) -> Option<ServiceType> {
        match name {
            "share" => Some(ServiceType::Filesystem),
            "db" => Some(ServiceType::Postgres),
            "web" => Some(ServiceType::Http),
            _ => None,
        }
    }

    pub(crate) fn submit(source: &str, sink: &str) -> Submission {
        Submission {
            source: source.into(),
            sink: sink.into(),
            ..Submission::default()
        }
    }

    #[test]
    fn create_table_is_for_postgresql_table_sinks_only() {
        let asked = |sink: &str| Submission {
            create_table: true,
            ..submit("share:/in/a.csv", sink)
        };
        assert!(asked("db:public.orders").parse(kinds).unwrap().create_table);
        assert!(
            !submit("share:/in/a.csv", "db:public.orders")
                .parse(kinds)
                .unwrap()
                .create_table
        );
        assert_eq!(
            asked("share:/out/a.parquet").parse(kinds).unwrap_err().0,
            "--create-table makes PostgreSQL tables; the sink share:/out/a.parquet is not one"
        );
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
    fn a_dataset_reads_back_as_it_was_given() {
        let spec = submit("db:\"Sales\".\"Order Items\"", "share:/out/x.csv")
            .parse(kinds)
            .unwrap();
        assert_eq!(spec.source.describe(), "db:\"Sales\".\"Order Items\"");
        assert_eq!(spec.sink.describe(), "share:/out/x.csv");
    }
}
