//! The submission checks of what a table copy does to its columns: their types (`--schema`,
//! `--timestamp-format`, `--date-format`), null markers (`--csv-null`), selection and names
//! (`--columns`, `--rename`) and where rows that do not fit go (`--on-bad-row`,
//! `--bad-rows`). Each is checked as far as it can be before the source is opened, with one
//! line naming the flag; what needs the source's header is checked when the copy starts.

use super::parse::{InvalidSpec, invalid};
use super::paths::RelPath;
use super::{BadRows, ColumnMapping, ColumnType, CsvOptions, DatasetRef, Format, Location, SchemaMode};
use crate::connectors::ServiceType;

/// `--schema`: `infer`, `text`, or the text of a schema file the CLI read.
pub(super) fn schema_mode(schema: &str, schema_columns: &str) -> Result<SchemaMode, InvalidSpec> {
    Ok(match (schema.to_ascii_lowercase().as_str(), schema_columns) {
        ("" | "infer", "") => SchemaMode::Infer,
        ("text", "") => SchemaMode::Text,
        ("", given) => {
            SchemaMode::Given(super::schema::parse_schema(given).map_err(|why| invalid(format!("--schema: {why}")))?)
        }
        (other, "") => {
            return Err(invalid(format!(
                "--schema '{other}' is not infer, text or a schema file"
            )));
        }
        (mode, _) => return Err(invalid(format!("--schema {mode} and a schema file: give one"))),
    })
}

/// Checks the time formats; `Some(true)` if the timestamp format holds an offset.
pub(super) fn check_formats(csv: &CsvOptions) -> Result<Option<bool>, InvalidSpec> {
    if let Some(f) = &csv.date_format {
        super::schema::check_date_format(f).map_err(|why| invalid(format!("--date-format {why}")))?;
    }
    match &csv.timestamp_format {
        Some(f) => super::schema::check_timestamp_format(f)
            .map(Some)
            .map_err(|why| invalid(format!("--timestamp-format {why}"))),
        None => Ok(None),
    }
}

/// A CSV file (or files) on a share or a store: what null markers, formats, schemas and
/// bad rows apply to.
fn is_csv_file(source: &DatasetRef) -> bool {
    matches!(source.format, Format::Csv(_)) && matches!(source.location, Location::Path(_))
}

/// Refuses typing options the job would not use: null markers for a source that is not CSV,
/// time formats and schema files where nothing is typed, and a schema whose timestamps
/// disagree with the format about zones.
pub(super) fn check_typing(
    csv: &CsvOptions,
    zoned: Option<bool>,
    source: &DatasetRef,
    sink: &DatasetRef,
    kind_of: &impl Fn(&str) -> Option<ServiceType>,
) -> Result<(), InvalidSpec> {
    let csv_source = is_csv_file(source);
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
        if !csv_source || !stores_types(sink, kind_of) || csv.schema == SchemaMode::Text {
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
            ColumnType::Timestamp => zoned,
            ColumnType::TimestampTz => !zoned,
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
        if !stores_types(sink, kind_of) {
            return Err(invalid(format!(
                "--schema FILE types columns for a Parquet or JSON Lines sink; {} takes the text as it is",
                sink.describe()
            )));
        }
    }
    Ok(())
}

/// Whether a sink keeps column types (Parquet, JSON Lines files): a CSV file is text, and a
/// PostgreSQL table converts text to its own columns' types.
pub(super) fn stores_types(sink: &DatasetRef, kind_of: &impl Fn(&str) -> Option<ServiceType>) -> bool {
    let files = kind_of(&sink.service).is_some_and(|k| k.holds_files());
    files && matches!(sink.format, Format::Parquet | Format::JsonLines)
}

/// `--columns` and `--rename` read and checked as far as they can be before the source's
/// columns are known: names given twice, and output names that clash among the columns
/// named here (or, with a schema file, among the file's columns).
pub(super) fn column_mapping(
    columns: &str,
    renames: &[String],
    schema: &SchemaMode,
    binary: bool,
) -> Result<ColumnMapping, InvalidSpec> {
    if binary && (!columns.trim().is_empty() || !renames.is_empty()) {
        return Err(invalid(
            "--columns and --rename apply to tables; --binary copies files as they are",
        ));
    }
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
pub(super) fn null_markers(given: &[String]) -> Result<Vec<String>, InvalidSpec> {
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

/// `--on-bad-row` and `--bad-rows`: skipping needs a folder on a share for the rejects
/// file (rows must not vanish unrecorded), and a folder is only for skipping.
pub(super) fn bad_rows(
    on_bad_row: &str,
    bad_rows: &str,
    binary: bool,
    kind_of: &impl Fn(&str) -> Option<ServiceType>,
    source: &DatasetRef,
) -> Result<Option<BadRows>, InvalidSpec> {
    let skip = match on_bad_row.to_ascii_lowercase().as_str() {
        "" | "fail" => false,
        "skip" => true,
        other => return Err(invalid(format!("--on-bad-row '{other}' is not fail or skip"))),
    };
    let folder = bad_rows.trim();
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
    let csv_source = is_csv_file(source);
    if !csv_source || binary {
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

#[cfg(test)]
mod tests {
    use super::super::parse::tests::{kinds, submit};
    use super::super::{ColumnMapping, ColumnType, Format, NamedColumn, SchemaMode, Submission};

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
                NamedColumn {
                    name: "id".into(),
                    column_type: ColumnType::Int64
                },
                NamedColumn {
                    name: "amount".into(),
                    column_type: ColumnType::Decimal {
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
}
