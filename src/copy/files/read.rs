//! Tabular file sources: CSV, JSON Lines and Parquet, read on a blocking thread into record
//! batches.
//!
//! Before the first batch the source is *planned*: its files are listed and their schemas
//! compared, so that a missing source or a file of another shape fails the copy before any
//! row moves. Then one thread reads the files in path order and hands batches through a
//! channel of [`BATCHES_IN_FLIGHT`], the first of them without rows (the columns alone); when the consumer goes away (the copy failed or was
//! cancelled) the next send fails and the thread stops.
//!
//! * **CSV**: every column is text (`Utf8`, nullable); an empty field is NULL. Column
//!   names come from the header, or are `column_1`, `column_2`, … without one. Text keeps
//!   a CSV→CSV copy faithful to the values (no `1.50` turned into `1.5`, no dates
//!   re-formatted, no guess from the first rows that a later row contradicts), and a
//!   PostgreSQL sink converts text to its column types as `COPY` does.
//!   Strict: an unterminated quote, an empty or repeated header name, a row of another
//!   width and (unless an encoding is named) bytes that are not UTF-8 are errors; so is a
//!   source without rows, unless it is allowed.
//! * **JSON Lines**: one object per line; column types are inferred from every line of
//!   every file (a first pass), so a value late in the data cannot contradict the guess;
//!   columns keep the order in which their keys first appear. Every file must have the
//!   same keys.
//! * **Parquet**: the files' own schemas, which must agree in column names and types.
//!
//! A bad row ends the stream with a fatal error naming the file and its line: the line
//! where the record starts, counting every physical line (a quoted CSV field may span
//! several).

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use futures::StreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;
use tokio::sync::mpsc;

use super::convert::{self, TimeFormats, Typing};
use super::csv_rows::{Schemas, read_csv};
use super::infer::{Inference, SAMPLE_ROWS};
use super::paths::{Root, SourceFile, Walk, resolve_sources};
use super::rejects::{Kept, Rejects};
use super::{BATCH_BYTES, BATCH_ROWS, BATCHES_IN_FLIGHT, IO_BUFFER, TableFormat, blocking, io_error};
use crate::copy::{Batches, CopyError, Counters, CsvOptions, Endpoint};
use crate::job_spec::{Encoding, SchemaMode};

pub(super) async fn read_table(
    source: &Endpoint,
    counters: &Counters,
    infer: bool,
    rejects: Option<Rejects>,
) -> Result<Batches, CopyError> {
    let root = Root::of(source)?;
    let text = root.path_of(source)?.to_owned();
    let format = TableFormat::of(source)?;
    let plan = blocking(move || Plan::make(root, &text, format, infer, rejects)).await?;

    let (tx, rx) = mpsc::channel(BATCHES_IN_FLIGHT);
    let counters = counters.clone();
    tokio::task::spawn_blocking(move || {
        // A reader that panics drops its sender, which a sink would take for the end of the
        // input and publish what it got: the panic is turned into an error item instead.
        let run = std::panic::AssertUnwindSafe(|| plan.run(&tx, &counters));
        if std::panic::catch_unwind(run).is_err() {
            let _ = tx.blocking_send(Err(CopyError::fatal(
                "the file reader failed unexpectedly (a bug in shir)",
            )));
        }
    });
    let batches = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Ok(batches.boxed())
}

/// One file of the source.
pub(super) struct Input {
    file: SourceFile,
    /// `service:path`, for messages.
    pub shown: String,
    /// Holds no rows and no schema (an empty CSV, a JSON Lines file of blank lines).
    empty: bool,
}

/// The files of a source and the one schema they share.
struct Plan {
    /// `service:path` of the source as given, for messages about the whole source.
    shown: String,
    format: TableFormat,
    inputs: Vec<Input>,
    /// The schema of the batches sent on.
    schema: SchemaRef,
    /// CSV with typed columns: the columns as read (all text), converted to `schema`'s.
    text_schema: Option<SchemaRef>,
    /// How a CSV file's text becomes `schema`'s types.
    typing: Typing,
    /// `--on-bad-row skip`: where CSV rows that cannot be copied go.
    rejects: Option<Rejects>,
}

/// Why reading stopped early.
pub(super) enum Stop {
    Failed(CopyError),
    /// The consumer is gone; nobody is left to tell.
    Closed,
}

impl From<CopyError> for Stop {
    fn from(e: CopyError) -> Self {
        Stop::Failed(e)
    }
}

impl Plan {
    /// `infer`: a CSV source's column types are inferred from a sample (see `infer`).
    fn make(
        root: Root,
        text: &str,
        format: TableFormat,
        infer: bool,
        rejects: Option<Rejects>,
    ) -> Result<Plan, CopyError> {
        let sources = resolve_sources(&root, text, Walk::Table)?;
        let inputs: Vec<Input> = sources
            .files
            .into_iter()
            .map(|file| Input {
                shown: root.show(&file.under_root),
                file,
                empty: false,
            })
            .collect();
        let mut plan = Plan {
            shown: format!("{}:{text}", root.service),
            format,
            inputs,
            schema: Arc::new(Schema::empty()),
            text_schema: None,
            typing: Typing::default(),
            rejects,
        };
        let format = plan.format.clone();
        let schema = match &format {
            TableFormat::Csv(options) => plan.agree(|input| csv_schema(input, options))?,
            TableFormat::Parquet => plan.agree(|input| parquet_schema(input).map(Some))?,
            TableFormat::JsonLines => json_schema(&mut plan.inputs)?,
        };
        plan.schema = Arc::new(schema);
        if let TableFormat::Csv(options) = &format
            && infer
        {
            plan.typing = Typing {
                given: matches!(options.schema, SchemaMode::Given(_)),
                formats: TimeFormats::new(options.timestamp_format.as_deref(), options.date_format.as_deref())?,
            };
            let typed = match &options.schema {
                SchemaMode::Given(columns) => convert::given_schema(&plan.schema, columns, &plan.shown_first())?,
                _ => plan.sample(options)?,
            };
            plan.text_schema = Some(std::mem::replace(&mut plan.schema, Arc::new(typed)));
        }
        Ok(plan)
    }

    /// The first file with columns, for messages about the columns all files share.
    fn shown_first(&self) -> String {
        let first = self.inputs.iter().find(|i| !i.empty);
        first.map_or_else(|| self.shown.clone(), |i| i.shown.clone())
    }

    /// The CSV columns with the types their first rows have, over the files in order.
    fn sample(&self, options: &CsvOptions) -> Result<Schema, CopyError> {
        let mut inference = Inference::new(self.schema.fields().len());
        let mut record = csv::StringRecord::new();
        for input in self.inputs.iter().filter(|i| !i.empty) {
            let (mut reader, _) = csv_reader(input, options, self.rejects.is_some(), None)?;
            let failed = |e| csv_error(input, e, options.header);
            if options.header {
                reader.read_record(&mut record).map_err(failed)?;
            }
            let width = self.schema.fields().len();
            while inference.rows < SAMPLE_ROWS && reader.read_record(&mut record).map_err(failed)? {
                // A row of another width goes to the rejects file; it says nothing of types.
                if record.len() == width {
                    inference.observe(&record, &options.nulls, &self.typing.formats);
                }
            }
            if inference.rows >= SAMPLE_ROWS {
                break;
            }
        }
        Ok(inference.apply(&self.schema))
    }

    /// Reads each file's schema and requires them to be the same; files without one (empty)
    /// are marked so and left out of the comparison.
    fn agree(
        &mut self,
        mut schema_of: impl FnMut(&Input) -> Result<Option<Schema>, CopyError>,
    ) -> Result<Schema, CopyError> {
        let mut first: Option<(Schema, String)> = None;
        for input in &mut self.inputs {
            let Some(found) = schema_of(input)? else {
                input.empty = true;
                continue;
            };
            match &first {
                None => first = Some((found, input.shown.clone())),
                Some((schema, shown)) => {
                    if let Some(difference) = difference(schema, &found) {
                        return Err(CopyError::fatal(format!(
                            "{} does not have the columns of {shown}: {difference}",
                            input.shown
                        )));
                    }
                }
            }
        }
        Ok(first.map(|(schema, _)| schema).unwrap_or_else(Schema::empty))
    }

    /// Reads every file in order into `tx`; ends with an error item when a file fails.
    fn run(self, tx: &mpsc::Sender<Result<RecordBatch, CopyError>>, counters: &Counters) {
        // The columns go first, in a batch without rows: what follows the source (column
        // mapping, a sink's header or schema) can check them and fail before the first row
        // is read, and a source without rows still has them.
        if tx
            .blocking_send(Ok(RecordBatch::new_empty(self.schema.clone())))
            .is_err()
        {
            return;
        }
        let mut sent = false;
        let mut emit = |batch: RecordBatch| -> Result<(), Stop> {
            sent = true;
            tx.blocking_send(Ok(batch)).map_err(|_| Stop::Closed)
        };
        for input in &self.inputs {
            let outcome = if input.empty {
                counters.add(0, 0, 1);
                Ok(())
            } else {
                match &self.format {
                    TableFormat::Csv(options) => {
                        let schemas = Schemas {
                            text: self.text_schema.as_ref().unwrap_or(&self.schema),
                            typed: self.text_schema.as_ref().map(|_| &self.schema),
                            typing: &self.typing,
                        };
                        read_csv(input, options, schemas, self.rejects.as_ref(), &mut emit, counters)
                    }
                    TableFormat::JsonLines => read_json(input, &self.schema, &mut emit, counters),
                    TableFormat::Parquet => read_parquet(input, &self.schema, &mut emit, counters),
                }
            };
            match outcome {
                Ok(()) => {}
                Err(Stop::Closed) => return,
                Err(Stop::Failed(e)) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        // A CSV source without rows is more often a failed export than an empty table.
        if !sent
            && let TableFormat::Csv(options) = &self.format
            && !options.allow_empty
        {
            let what = match self.inputs.as_slice() {
                [one] if one.empty => format!("{} is empty", one.shown),
                [one] => format!("{} has a header and no rows", one.shown),
                all => format!("none of the {} files of {} holds a row", all.len(), self.shown),
            };
            let _ = tx.blocking_send(Err(CopyError::fatal(format!(
                "{what}: give --allow-empty to copy an empty input"
            ))));
        }
    }
}

/// The first way in which `other` differs from `first`, in names or types of columns.
fn difference(first: &Schema, other: &Schema) -> Option<String> {
    let describe = |f: &Field| format!("'{}' ({})", f.name(), f.data_type());
    let (a, b) = (first.fields(), other.fields());
    for i in 0..a.len().max(b.len()) {
        match (a.get(i), b.get(i)) {
            (Some(x), Some(y)) if x.name() == y.name() && x.data_type() == y.data_type() => {}
            (Some(x), Some(y)) => {
                return Some(format!(
                    "column {} is {} there and {} here",
                    i + 1,
                    describe(x),
                    describe(y)
                ));
            }
            (Some(x), None) => return Some(format!("column {} {} is missing", i + 1, describe(x))),
            (None, Some(y)) => return Some(format!("column {} {} is extra", i + 1, describe(y))),
            (None, None) => {}
        }
    }
    None
}

fn open(input: &Input) -> Result<File, CopyError> {
    File::open(&input.file.path).map_err(|e| io_error(format!("cannot open {}", input.shown), &e))
}

// --- CSV -------------------------------------------------------------------------------

/// What a CSV reader reads: the file itself, or the file decoded to UTF-8.
type CsvInput = Box<dyn Read + Send>;

/// A CSV reader over one file, past a UTF-8 byte-order mark if the file starts with one
/// (spreadsheet exports do; left in, it would become part of the first column's name), and
/// decoded to UTF-8 if the source names another encoding. Also returns the length of the
/// mark skipped, so that progress counts every byte.
///
/// `lenient` (`--on-bad-row skip`) lets records of another width through for the caller to
/// reject; with `kept` the text read is kept there, to quote rejected records from.
pub(super) fn csv_reader(
    input: &Input,
    options: &CsvOptions,
    lenient: bool,
    kept: Option<&Kept>,
) -> Result<(csv::Reader<CsvInput>, u64), CopyError> {
    let (file, skipped) = csv_file(input, options)?;
    let file = match kept {
        Some(kept) => kept.tee(file),
        None => file,
    };
    let reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .delimiter(options.delimiter)
        .quote(options.quote)
        // Every record must have as many fields as the first (the header, if any).
        .flexible(lenient)
        .buffer_capacity(IO_BUFFER)
        .from_reader(file);
    Ok((reader, skipped))
}

/// The text a CSV reader parses: the file past its byte-order mark, decoded if need be.
fn csv_file(input: &Input, options: &CsvOptions) -> Result<(CsvInput, u64), CopyError> {
    let mut file = open(input)?;
    if options.encoding != Encoding::Utf8 {
        return Ok((Box::new(Decoded::new(file, options.encoding)), 0));
    }
    let mut head = [0u8; 3];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(format!("cannot read {}", input.shown), &e)),
        }
    }
    let bom = head[..got] == [0xEF, 0xBB, 0xBF];
    if !bom {
        file.seek(SeekFrom::Start(0))
            .map_err(|e| io_error(format!("cannot read {}", input.shown), &e))?;
    }
    Ok((Box::new(file), if bom { 3 } else { 0 }))
}

/// A single-byte encoding decoded to UTF-8 as it is read. Every byte decodes (these
/// encodings have no invalid bytes), so a decoded source never fails as "not UTF-8".
struct Decoded {
    file: File,
    decoder: Option<encoding_rs::Decoder>,
    raw: Vec<u8>,
    out: Vec<u8>,
    /// The part of `out` not yet handed out.
    start: usize,
    end: usize,
}

impl Decoded {
    fn new(file: File, encoding: Encoding) -> Self {
        // encoding_rs follows the WHATWG, where "latin1" means windows-1252: ISO-8859-1
        // proper is decoded with its own Latin-1 routine instead.
        let decoder =
            (encoding == Encoding::Windows1252).then(|| encoding_rs::WINDOWS_1252.new_decoder_without_bom_handling());
        Decoded {
            file,
            decoder,
            raw: vec![0; 64 * 1024],
            out: vec![0; 3 * 64 * 1024],
            start: 0,
            end: 0,
        }
    }
}

impl Read for Decoded {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.start == self.end {
            let n = self.file.read(&mut self.raw)?;
            if n == 0 {
                return Ok(0);
            }
            let written = match &mut self.decoder {
                // Each byte becomes at most 3 bytes of UTF-8, which `out` has room for.
                Some(decoder) => {
                    decoder
                        .decode_to_utf8_without_replacement(&self.raw[..n], &mut self.out, false)
                        .2
                }
                None => encoding_rs::mem::convert_latin1_to_utf8(&self.raw[..n], &mut self.out),
            };
            (self.start, self.end) = (0, written);
        }
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.out[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }
}

/// Whether a CSV record's text (from its first byte to the end of the file) ends inside a
/// quoted field. The csv crate takes the end of the file for the end of such a field, so a
/// stray quote would otherwise swallow the rest of the file into one value unnoticed.
fn ends_in_quote(text: &[u8], delimiter: u8, quote: u8) -> bool {
    let (mut quoted, mut field_start) = (false, true);
    let mut bytes = text.iter().peekable();
    while let Some(&b) = bytes.next() {
        if quoted {
            if b == quote {
                if bytes.peek() == Some(&&quote) {
                    bytes.next();
                } else {
                    quoted = false;
                }
            }
        } else if b == quote && field_start {
            quoted = true;
            field_start = false;
        } else {
            field_start = b == delimiter || b == b'\n' || b == b'\r';
        }
    }
    quoted
}

/// Refuses the last record of a file if a quote opened in it is never closed.
pub(super) fn check_last_record(
    input: &Input,
    options: &CsvOptions,
    start: Option<csv::Position>,
) -> Result<(), CopyError> {
    let Some(start) = start else { return Ok(()) };
    let failed = |e: std::io::Error| io_error(format!("cannot read {}", input.shown), &e);
    let (mut text, skipped) = csv_file(input, options)?;
    if options.encoding == Encoding::Utf8 {
        // Positions count the file's own bytes (past the mark): go straight there.
        let mut file = open(input)?;
        file.seek(SeekFrom::Start(skipped + start.byte())).map_err(failed)?;
        text = Box::new(file);
    } else {
        // Decoded positions do not map back to the file's: decode up to the record again.
        std::io::copy(&mut (&mut text).take(start.byte()), &mut std::io::sink()).map_err(failed)?;
    }
    let mut tail = Vec::new();
    text.read_to_end(&mut tail).map_err(failed)?;
    if ends_in_quote(&tail, options.delimiter, options.quote) {
        return Err(CopyError::fatal(format!(
            "{} line {}: a quoted field is never closed (an unterminated quote runs to the end of the file)",
            input.shown,
            start.line()
        )));
    }
    Ok(())
}

pub(super) fn csv_error(input: &Input, e: csv::Error, header: bool) -> CopyError {
    let line = e.position().map(|p| p.line()).unwrap_or(0);
    match e.kind() {
        csv::ErrorKind::Io(io) => io_error(format!("cannot read {}", input.shown), io),
        csv::ErrorKind::Utf8 { err, .. } => CopyError::fatal(format!(
            "{} line {line}: field {} is not valid UTF-8",
            input.shown,
            err.field() + 1
        )),
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            let expected = if header { "the header has" } else { "the first row has" };
            CopyError::fatal(format!(
                "{} line {line}: {len} fields where {expected} {expected_len}",
                input.shown
            ))
        }
        _ => CopyError::fatal(format!("{} line {line}: {e}", input.shown)),
    }
}

/// The columns of one CSV file, from its first record; `None` for a file without records.
fn csv_schema(input: &Input, options: &CsvOptions) -> Result<Option<Schema>, CopyError> {
    let (mut reader, _) = csv_reader(input, options, false, None)?;
    let mut record = csv::StringRecord::new();
    if !reader
        .read_record(&mut record)
        .map_err(|e| csv_error(input, e, options.header))?
    {
        return Ok(None);
    }
    let fields: Vec<Field> = if options.header {
        check_header(input, &record)?;
        record
            .iter()
            .map(|name| Field::new(name, DataType::Utf8, true))
            .collect()
    } else {
        (1..=record.len())
            .map(|i| Field::new(format!("column_{i}"), DataType::Utf8, true))
            .collect()
    };
    Ok(Some(Schema::new(fields)))
}

/// Column names must be there and differ: a sink cannot write two columns of one name, and
/// a blank one is usually a stray delimiter.
fn check_header(input: &Input, header: &csv::StringRecord) -> Result<(), CopyError> {
    let line = header.position().map(|p| p.line()).unwrap_or(1);
    let mut seen = std::collections::HashMap::new();
    for (i, name) in header.iter().enumerate() {
        if name.trim().is_empty() {
            return Err(CopyError::fatal(format!(
                "{} line {line}: column {} of the header has no name",
                input.shown,
                i + 1
            )));
        }
        if let Some(first) = seen.insert(name, i) {
            return Err(CopyError::fatal(format!(
                "{} line {line}: the header names columns {} and {} both '{name}'",
                input.shown,
                first + 1,
                i + 1
            )));
        }
    }
    Ok(())
}

// --- JSON Lines ------------------------------------------------------------------------

/// A JSON object with its keys in the order they were written: serde_json's own map sorts
/// them, and columns should come out in the order the data has them.
struct OrderedObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, Value>()? {
                    pairs.push(pair);
                }
                Ok(OrderedObject(pairs))
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

/// serde_json's message without its "at line 1 column N" (every parse here is one line):
/// the caller says which line of the file.
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let message = text.rsplit_once(" at line ").map_or(text.as_str(), |(m, _)| m);
    format!("column {}: {message}", e.column())
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// The keys of one file, in first-appearance order.
#[derive(Default)]
struct Keys {
    order: Vec<String>,
    seen: HashSet<String>,
}

/// Every object of every file, for arrow's schema inference, which then applies one set of
/// type rules (integers and floats make floats, conflicting kinds make text) across all of
/// them. A bad line stops the iteration; the error with its line number is kept in
/// `failure`.
struct JsonValues<'a> {
    inputs: std::slice::Iter<'a, Input>,
    current: Option<(BufReader<File>, &'a Input, u64)>,
    line: Vec<u8>,
    keys: Vec<Keys>,
    failure: Option<CopyError>,
}

impl JsonValues<'_> {
    fn fail(&mut self, e: CopyError) -> Option<Result<Value, arrow::error::ArrowError>> {
        self.failure = Some(e);
        Some(Err(arrow::error::ArrowError::JsonError("stopped".into())))
    }
}

impl Iterator for JsonValues<'_> {
    type Item = Result<Value, arrow::error::ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let input = self.inputs.next()?;
                match open(input) {
                    Ok(file) => self.current = Some((BufReader::with_capacity(IO_BUFFER, file), input, 0)),
                    Err(e) => return self.fail(e),
                }
                self.keys.push(Keys::default());
            }
            let (reader, input, line_no) = self.current.as_mut().expect("a file is open");
            let input: &Input = input;
            self.line.clear();
            match reader.read_until(b'\n', &mut self.line) {
                Ok(0) => {
                    self.current = None;
                    continue;
                }
                Ok(_) => *line_no += 1,
                Err(e) => return self.fail(io_error(format!("cannot read {}", input.shown), &e)),
            }
            if is_blank(&self.line) {
                continue;
            }
            let line_no = *line_no;
            match serde_json::from_slice::<OrderedObject>(&self.line) {
                Ok(OrderedObject(pairs)) => {
                    let keys = self.keys.last_mut().expect("keys of the open file");
                    for (key, _) in &pairs {
                        if keys.seen.insert(key.clone()) {
                            keys.order.push(key.clone());
                        }
                    }
                    return Some(Ok(Value::Object(pairs.into_iter().collect())));
                }
                Err(e) => {
                    let message = format!("{} line {line_no}: {}", input.shown, json_message(&e));
                    return self.fail(CopyError::fatal(message));
                }
            }
        }
    }
}

/// Infers one schema over all files (a full pass) and requires every file with rows to
/// have the same keys; marks files without rows empty.
fn json_schema(inputs: &mut [Input]) -> Result<Schema, CopyError> {
    let mut values = JsonValues {
        inputs: inputs.iter(),
        current: None,
        line: Vec::new(),
        keys: Vec::new(),
        failure: None,
    };
    let inferred = arrow_json_infer(&mut values);
    if let Some(failure) = values.failure {
        return Err(failure);
    }
    let inferred = inferred.map_err(|e| {
        CopyError::fatal(format!(
            "{}: cannot find column types for the JSON lines: {e}",
            inputs.first().map_or("", |i| i.shown.as_str())
        ))
    })?;
    let keys = values.keys;

    let mut first: Option<usize> = None;
    for (i, file_keys) in keys.iter().enumerate() {
        if file_keys.order.is_empty() {
            inputs[i].empty = true;
            continue;
        }
        let Some(f) = first else {
            first = Some(i);
            continue;
        };
        let reference = &keys[f];
        let missing = reference.order.iter().find(|k| !file_keys.seen.contains(*k));
        let extra = file_keys.order.iter().find(|k| !reference.seen.contains(*k));
        let difference = match (missing, extra) {
            (Some(k), _) => format!("it has no key '{k}'"),
            (None, Some(k)) => format!("it has a key '{k}' in addition"),
            (None, None) => continue,
        };
        return Err(CopyError::fatal(format!(
            "{} does not have the columns of {}: {difference}",
            inputs[i].shown, inputs[f].shown
        )));
    }
    let Some(first) = first else {
        return Ok(Schema::empty());
    };
    // Arrow infers in its own key order; put the columns in the data's.
    let fields: Vec<Field> = keys[first]
        .order
        .iter()
        .filter_map(|k| inferred.field_with_name(k).ok().cloned())
        .collect();
    Ok(Schema::new(fields))
}

fn arrow_json_infer(values: &mut JsonValues<'_>) -> Result<Schema, arrow::error::ArrowError> {
    arrow::json::reader::infer_json_schema_from_iterator(values)
}

fn read_json(
    input: &Input,
    schema: &SchemaRef,
    emit: &mut dyn FnMut(RecordBatch) -> Result<(), Stop>,
    counters: &Counters,
) -> Result<(), Stop> {
    let decode_error =
        |what: String, e: arrow::error::ArrowError| Stop::Failed(CopyError::fatal(format!("{what}: {e}")));
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(BATCH_ROWS)
        // The inferred type of a column that mixes kinds is text; numbers and booleans in
        // it are then read as their JSON text.
        .with_coerce_primitive(true)
        .build_decoder()
        .map_err(|e| decode_error(input.shown.clone(), e))?;
    let mut reader = BufReader::with_capacity(IO_BUFFER, open(input)?);
    let mut line = Vec::new();
    let (mut line_no, mut first_line) = (0u64, 0u64);
    let (mut rows, mut text) = (0usize, 0usize);

    let mut flush =
        |decoder: &mut arrow::json::reader::Decoder, rows: usize, text: usize, lines: (u64, u64)| match decoder.flush()
        {
            Ok(Some(batch)) => {
                counters.add(rows as u64, text as u64, 0);
                emit(batch)
            }
            Ok(None) => Ok(()),
            Err(e) => Err(decode_error(
                format!("{} lines {}-{}", input.shown, lines.0, lines.1),
                e,
            )),
        };

    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Stop::Failed(io_error(format!("cannot read {}", input.shown), &e)))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        text += n;
        if is_blank(&line) {
            continue;
        }
        if rows == 0 {
            first_line = line_no;
        }
        decoder
            .decode(&line)
            .map_err(|e| decode_error(format!("{} line {line_no}", input.shown), e))?;
        rows += 1;
        if rows == BATCH_ROWS || text >= BATCH_BYTES {
            flush(&mut decoder, rows, text, (first_line, line_no))?;
            (rows, text) = (0, 0);
        }
    }
    flush(&mut decoder, rows, text, (first_line, line_no))?;
    counters.add(0, 0, 1);
    Ok(())
}

// --- Parquet ---------------------------------------------------------------------------

fn parquet_error(input: &Input, e: parquet::errors::ParquetError) -> CopyError {
    CopyError::fatal(format!("{}: not a readable Parquet file: {e}", input.shown))
}

/// A file's columns as names and types: nullability and metadata (field ids, the writer's
/// embedded Arrow schema) differ between writers of the same data and are not compared.
fn plain(schema: &Schema) -> Schema {
    Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| crate::copy::plain_field(f))
            .collect::<Vec<_>>(),
    )
}

fn parquet_schema(input: &Input) -> Result<Schema, CopyError> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(open(input)?).map_err(|e| parquet_error(input, e))?;
    Ok(plain(builder.schema()))
}

fn read_parquet(
    input: &Input,
    schema: &SchemaRef,
    emit: &mut dyn FnMut(RecordBatch) -> Result<(), Stop>,
    counters: &Counters,
) -> Result<(), Stop> {
    let file = open(input)?;
    let size = file_size(&file, &input.shown)?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(input, e))?;
    let total = builder.metadata().file_metadata().num_rows().max(0) as u64;
    let reader = builder
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| parquet_error(input, e))?;
    let (mut done, mut counted) = (0u64, 0u64);
    for batch in reader {
        let batch = batch
            .map_err(|e| CopyError::fatal(format!("{}: cannot read the rows after row {done}: {e}", input.shown)))?;
        let rows = batch.num_rows();
        let batch = RecordBatch::try_new_with_options(
            schema.clone(),
            batch.columns().to_vec(),
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| CopyError::fatal(format!("{}: {e}", input.shown)))?;
        done += rows as u64;
        // Bytes as a share of the file, for progress: Parquet has no line to count.
        let bytes = if total == 0 {
            0
        } else {
            (u128::from(size) * u128::from(done.min(total)) / u128::from(total)) as u64
        };
        counters.add(rows as u64, bytes - counted, 0);
        counted = bytes;
        emit(batch)?;
    }
    counters.add(0, size.saturating_sub(counted), 1);
    Ok(())
}

fn file_size(file: &File, shown: &str) -> Result<u64, CopyError> {
    Ok(file
        .metadata()
        .map_err(|e| io_error(format!("cannot read {shown}"), &e))?
        .len())
}
