//! PostgreSQL sources (a table or a query) and sinks (a table, loaded with COPY), staged in
//! an open transaction and published by committing it together with the job's idempotency
//! record.
//!
//! **Reading** ([`read_table`]) asks the server to describe the query (a table is read as
//! `SELECT * FROM "schema"."table"`), maps each column's type to Arrow, then streams
//! `COPY (query) TO STDOUT (FORMAT binary)` and decodes it into record batches of up to
//! [`BATCH_ROWS`] rows in a task of its own, a few batches ahead of the sink. Memory stays
//! bounded whatever the table's size. The query runs in a read-only transaction: a source
//! does not write. The mapping:
//!
//! | PostgreSQL                                      | Arrow                           |
//! |-------------------------------------------------|---------------------------------|
//! | `boolean`                                       | `Boolean`                       |
//! | `smallint`, `integer`, `bigint`                 | `Int16`, `Int32`, `Int64`       |
//! | `real`, `double precision`                      | `Float32`, `Float64`            |
//! | `numeric(p,s)`, p ≤ 38                          | `Decimal128(p, s)`              |
//! | `numeric(p,s)`, 38 < p ≤ 76                     | `Decimal256(p, s)`              |
//! | `numeric` (no precision, or p > 76)             | `Utf8`, the exact decimal text as PostgreSQL prints it (`NaN`, `Infinity` too) |
//! | `text`, `varchar`, `char(n)`, `name`, enums     | `Utf8`                          |
//! | `json`, `jsonb`                                 | `Utf8` (the JSON text)          |
//! | `uuid`                                          | `Utf8` (`xxxxxxxx-xxxx-…`)      |
//! | `interval`                                      | `Utf8`, in words (`1 year 2 months 3 days 04:05:06.5` as `… 4 hours 5 minutes 6.5 seconds`) |
//! | `bytea`                                         | `Binary`                        |
//! | `date`                                          | `Date32`                        |
//! | `time`                                          | `Time64(µs)`                    |
//! | `timestamp`                                     | `Timestamp(µs)`                 |
//! | `timestamptz`                                   | `Timestamp(µs, "+00:00")` (UTC) |
//! | a one-dimensional array of any of these         | `List` of the element's type    |
//! | a domain                                        | as its base type                |
//!
//! The precision and scale come from the type modifier in the server's description of the
//! query, so a cast in a query (`amount::numeric(12,2)`) gives a decimal too; a computed
//! `numeric` has none and stays text. PostgreSQL 15's negative scales and scales above the
//! precision get the smallest Arrow decimal that holds every value exactly. Built-in
//! types are also named in each field's metadata ([`POSTGRES_TYPE`]), so that
//! `--create-table` can make a table of the same types.
//!
//! NULLs stay NULL. A `NaN` or infinity in a decimal column fails the job naming the row
//! and column (no decimal holds it; the query can replace it), as does an infinite date or
//! timestamp, which Arrow cannot hold, or an array of more than one dimension. Any other
//! type (inet, ranges, …) fails the job naming the column and its type; a query can cast
//! it (`during::text`).
//!
//! **Writing** ([`write_table`]) loads into the sink table's columns by name: the column
//! of the same name, or else the one that matches ignoring case (PostgreSQL folds an
//! unquoted `Amount` to `amount`). A source column the table lacks, or whose type cannot
//! go into its column, fails the job naming it; table columns the source lacks get their
//! defaults. A CSV file without a header (columns named `column_1`, …) loads by position.
//! With `--create-table`, a missing table is made first, in the load's transaction, from
//! the source's columns (`create.rs`). The load opens a transaction and sends the rows with
//! `COPY … FROM STDIN` in the text format, so the server parses every value into its
//! column's type and names the row and column of a value it cannot read. The transaction
//! is left open: the rows (and a table made for them) are invisible to everyone else until
//! [`Staged::publish`] commits it, and gone if the attempt is discarded or its node dies.
//!
//! **Publishing** records the job in `STATE_SCHEMA.job_commits` (the linked service's
//! `state_schema`, `shir` by default; created on first use, see [`COMMITS_TABLE`]) in the
//! same transaction, with `INSERT … ON CONFLICT DO NOTHING`. If the job is already there,
//! another attempt has published it: this one rolls back and the target keeps exactly one
//! copy. Two attempts publishing at once serialize on the record's primary key: the second
//! waits for the first and then finds the record.
//!
//! **Counting**: as every tabular source, the reader counts the rows and bytes it reads (its
//! stream keeps a clone of the counters); the sink adds nothing. The consistency check
//! compares the rows the sink received with the rows the server reports COPY stored.

mod create;
mod decode;
mod encode;

pub use decode::POSTGRES_TYPE;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use tokio_postgres::Client;

use super::{
    AttemptId, Batches, Consistency, CopyError, Counters, Endpoint, Location, Published, Staged, StagedOutput,
};
use crate::connectors::one_line;
use crate::connectors::postgres::{connect as connect_service, is_retryable};
use crate::job_spec::names::quote_ident;

/// Rows per record batch: large enough that per-batch costs vanish, small enough that a
/// batch of wide rows stays a few megabytes.
pub const BATCH_ROWS: usize = 8192;

/// A batch is cut earlier once its rows took this many bytes on the wire, so that very wide
/// rows (large text or bytea values) do not make batches of hundreds of megabytes.
pub const BATCH_BYTES: usize = 32 << 20;

/// Decoded batches waiting for the sink: enough to keep both sides busy, few enough to keep
/// memory bounded (at most this many times [`BATCH_BYTES`]).
const BATCHES_AHEAD: usize = 4;

use crate::timing::POSTGRES_CONNECT_TIMEOUT as CONNECT_TIMEOUT;

/// The idempotency record: one row per published job, in every database shir writes to,
/// in the schema the linked service's `state_schema` names ([`DEFAULT_STATE_SCHEMA`] if it
/// names none). A role that may not create schemas needs it made once by an owner (the
/// statements are [`create_commits_sql`]) and `INSERT, SELECT` on it.
pub const COMMITS_TABLE: &str = "job_commits";

/// Where the idempotency records are when the linked service does not say.
pub const DEFAULT_STATE_SCHEMA: &str = "shir";

/// `"schema"."table"` for SQL.
fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// A server error as one line, `context: message; detail (where)`, fatal or transient as
/// [`is_retryable`] judges it.
fn pg_error(context: &str, e: &tokio_postgres::Error) -> CopyError {
    let text = match e.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_owned();
            if let Some(detail) = db.detail() {
                text.push_str("; ");
                text.push_str(detail);
            }
            if let Some(hint) = db.hint() {
                text.push_str("; ");
                text.push_str(hint);
            }
            if let Some(place) = db.where_() {
                text.push_str(&format!(" ({place})"));
            }
            text
        }
        None => crate::error_chain(e),
    };
    let message = one_line(&format!("{context}: {text}"));
    if is_retryable(e) {
        CopyError::transient(message)
    } else {
        CopyError::fatal(message)
    }
}

/// Connects to the endpoint's database; nothing listening or a timeout is transient, a
/// refused login fatal.
async fn connect(endpoint: &Endpoint, application_name: &str) -> Result<Client, CopyError> {
    let attempt = connect_service(&endpoint.service, application_name, CONNECT_TIMEOUT);
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(failure)) if failure.retryable => Err(CopyError::transient(failure.message)),
        Ok(Err(failure)) => Err(CopyError::fatal(failure.message)),
        Err(_) => Err(CopyError::transient(format!(
            "gave up connecting to linked service {} after {} s",
            endpoint.service_name,
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// Runs the table read or query and yields its rows as record batches.
///
/// Counts the rows and the COPY bytes it reads, as every tabular source does.
pub async fn read_table(source: &Endpoint, counters: &Counters) -> Result<Batches, CopyError> {
    let counters = counters.clone();
    let (query, what) = match &source.location {
        Location::Table { schema, table } => (
            format!("SELECT * FROM {}", qualified(schema, table)),
            format!("source table {schema}.{table}"),
        ),
        Location::Query(sql) => {
            let sql = sql.trim().trim_end_matches(|c: char| c == ';' || c.is_whitespace());
            if sql.is_empty() {
                return Err(CopyError::fatal("the source query is empty"));
            }
            (sql.to_owned(), "source query".to_owned())
        }
        Location::Path(path) => {
            return Err(CopyError::fatal(format!(
                "a PostgreSQL source is a table (SCHEMA.TABLE) or a query, not the path {path}"
            )));
        }
    };

    let client = connect(source, "shir copy source").await?;
    client
        .batch_execute("START TRANSACTION READ ONLY")
        .await
        .map_err(|e| pg_error(&what, &e))?;
    let statement = client.prepare(&query).await.map_err(|e| {
        if let (Location::Table { .. }, Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)) =
            (&source.location, e.code())
        {
            CopyError::fatal(format!("{what} does not exist"))
        } else {
            pg_error(&what, &e)
        }
    })?;

    let mut columns = Vec::with_capacity(statement.columns().len());
    for (i, column) in statement.columns().iter().enumerate() {
        // The type modifier comes with the server's description of the query, so a query's
        // `amount::numeric(12,2)` is as precise as a table's column.
        let shape = decode::shape_for(column.type_(), column.type_modifier()).ok_or_else(|| {
            CopyError::fatal(format!(
                "{what}: column {} (\"{}\") has type {}, which shir cannot map to a copy column \
                 (cast it in a query, e.g. \"{}\"::text)",
                i + 1,
                column.name(),
                column.type_(),
                column.name()
            ))
        })?;
        columns.push(decode::SourceColumn {
            name: column.name().to_owned(),
            shape,
            sql_type: decode::sql_type(column.type_(), column.type_modifier()),
        });
    }
    if columns.is_empty() {
        return Err(CopyError::fatal(format!("{what} returns no columns")));
    }

    // The query on lines of its own: a trailing `-- comment` must not swallow the `)`.
    let copy = format!("COPY (\n{query}\n) TO STDOUT (FORMAT binary)");
    let stream = client.copy_out(&copy).await.map_err(|e| pg_error(&what, &e))?;

    let (tx, rx) = tokio::sync::mpsc::channel(BATCHES_AHEAD);
    let mut decoder = decode::BatchDecoder::new(columns, BATCH_ROWS, BATCH_BYTES);
    let on_panic = tx.clone();
    let decode_task = tokio::spawn(async move {
        // The client lives as long as the stream it feeds; once the sink stops pulling
        // (done or failed), sending fails, both are dropped and the server ends the query.
        let _client = client;
        futures::pin_mut!(stream);
        let mut sent_any = false;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            if let Ok(chunk) = &chunk {
                counters.add(0, chunk.len() as u64, 0);
            }
            let decoded = match chunk {
                Ok(chunk) => decoder
                    .feed(&chunk, &mut out)
                    .map_err(|why| CopyError::fatal(format!("{what}: {why}"))),
                Err(e) => Err(pg_error(&what, &e)),
            };
            if let Err(e) = decoded {
                let _ = tx.send(Err(e)).await;
                return;
            }
            for batch in out.drain(..) {
                sent_any = true;
                counters.add(batch.num_rows() as u64, 0, 0);
                if tx.send(Ok(batch)).await.is_err() {
                    return;
                }
            }
        }
        let last = match decoder.finish() {
            Ok(Some(last)) => Ok(last),
            Ok(None) if !sent_any => Ok(decoder.empty_batch()),
            Ok(None) => return,
            Err(why) => Err(CopyError::transient(format!("{what}: {why}"))),
        };
        if let Ok(batch) = &last {
            counters.add(batch.num_rows() as u64, 0, 0);
        }
        let _ = tx.send(last).await;
    });
    // A decoder that panics drops its sender, which a sink would take for the end of the
    // input and publish what it got: the panic is turned into an error item instead.
    tokio::spawn(async move {
        if let Err(e) = decode_task.await
            && e.is_panic()
        {
            let _ = on_panic
                .send(Err(CopyError::fatal(
                    "the PostgreSQL reader failed unexpectedly (a bug in shir)",
                )))
                .await;
        }
    });
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

/// The columns COPY can write in the sink table, in order; `None` if the table does not
/// exist, a fatal error if it is not something rows can be loaded into.
async fn sink_columns(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Option<Vec<encode::SinkColumn>>, CopyError> {
    let what = format!("sink table {schema}.{table}");
    let found = client
        .query_opt(
            "SELECT c.oid, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await
        .map_err(|e| pg_error(&what, &e))?;
    let Some(found) = found else {
        return Ok(None);
    };
    let (oid, kind): (u32, String) = (found.get(0), found.get(1));
    match kind.as_str() {
        // Ordinary, partitioned and foreign tables.
        "r" | "p" | "f" => {}
        "v" | "m" => return Err(CopyError::fatal(format!("{what} is a view, not a table"))),
        other => {
            return Err(CopyError::fatal(format!("{what} is not a table (relkind {other})")));
        }
    }
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END, \
                    a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(|e| pg_error(&what, &e))?;
    Ok(Some(
        rows.iter()
            .map(|row| encode::SinkColumn {
                name: row.get(0),
                type_name: row.get(1),
                target: encode::target_for(row.get(2)),
                required: row.get(3),
            })
            .collect(),
    ))
}

/// The schema of a linked service's idempotency records (its `state_schema` setting).
fn state_schema(endpoint: &Endpoint) -> &str {
    endpoint.service.get("state_schema").unwrap_or(DEFAULT_STATE_SCHEMA)
}

/// `schema.job_commits`, quoted for SQL.
fn commits_table(schema: &str) -> String {
    format!("{}.{COMMITS_TABLE}", quote_ident(schema))
}

/// The statements that make the idempotency record in `schema` (a name the linked
/// service's validation allowed: lowercase letters, digits and `_`).
pub fn create_commits_sql(schema: &str) -> String {
    let table = commits_table(schema);
    format!(
        "CREATE SCHEMA IF NOT EXISTS {}; \
         CREATE TABLE IF NOT EXISTS {table} (\
             job_id text PRIMARY KEY, \
             attempt integer NOT NULL, \
             sink_table text NOT NULL, \
             rows bigint NOT NULL, \
             committed_at timestamptz NOT NULL DEFAULT now())",
        quote_ident(schema)
    )
}

/// Makes sure the idempotency record exists before the load starts. Only creates it when
/// missing, so a role without CREATE can use one made by an owner; two creators racing
/// each other make one of them fail with a duplicate, and it looks again. Creating it is
/// said once, in the node's log, naming the table and the linked service.
async fn ensure_commits_table(client: &Client, sink: &Endpoint) -> Result<(), CopyError> {
    use tokio_postgres::error::SqlState;
    let schema = state_schema(sink);
    let table = format!("{schema}.{COMMITS_TABLE}");
    let context = format!("the idempotency record {table}");
    for _ in 0..3 {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&commits_table(schema)])
            .await
            .map_err(|e| pg_error(&context, &e))?
            .get(0);
        if exists {
            return Ok(());
        }
        match client.batch_execute(&create_commits_sql(schema)).await {
            Ok(()) => {
                tracing::info!(
                    service = %sink.service_name,
                    table = %table,
                    "created {table}, where shir records the jobs it loaded into this database \
                     (linked service {}, state_schema {schema})",
                    sink.service_name
                );
                return Ok(());
            }
            Err(e)
                if matches!(
                    e.code(),
                    Some(&SqlState::UNIQUE_VIOLATION | &SqlState::DUPLICATE_SCHEMA | &SqlState::DUPLICATE_TABLE)
                ) => {}
            Err(e) => {
                let mut error = pg_error(&format!("cannot create {context}"), &e);
                if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
                    error.message.push_str(&format!(
                        "; have an owner of the database run once: {}; and grant this role USAGE on schema {schema} and INSERT, SELECT on the table",
                        create_commits_sql(schema)
                    ));
                }
                return Err(error);
            }
        }
    }
    Err(CopyError::transient(format!(
        "cannot create {context}: it keeps being created and not found"
    )))
}

/// Loads `batches` into the sink table inside a transaction left open for publish; with
/// `create_table`, a missing table is made in that transaction first, so it exists only if
/// the job publishes.
pub async fn write_table(
    attempt: &AttemptId,
    sink: &Endpoint,
    batches: Batches,
    counters: &Counters,
    create_table: bool,
) -> Result<Staged, CopyError> {
    let Location::Table { schema, table } = &sink.location else {
        return Err(CopyError::fatal(
            "a PostgreSQL sink is a table (SCHEMA.TABLE), not a query or a path",
        ));
    };
    // The source counts what it reads; a sink adds nothing (see `Counters`).
    let _ = counters;
    let what = format!("sink table {schema}.{table}");
    let shown = format!("{schema}.{table}");
    let name = qualified(schema, table);

    let client = connect(
        sink,
        &format!("shir job {} attempt {}", attempt.job_id, attempt.attempt),
    )
    .await?;
    // Timestamps without a zone written to a timestamptz column are taken as UTC, as
    // Arrow means them; dates in the ISO order the encoder writes.
    client
        // A staged transaction waits for publish permission for seconds, not minutes: one
        // left idle longer belongs to a worker that was paused or cut off, and must not
        // hold the job's idempotency record (and the next attempt) hostage.
        .batch_execute(
            "SET TIME ZONE 'UTC'; SET DateStyle = 'ISO, YMD'; \
             SET idle_in_transaction_session_timeout = '120s'; SET lock_timeout = '120s'",
        )
        .await
        .map_err(|e| pg_error(&what, &e))?;
    ensure_commits_table(&client, sink).await?;
    // Looked at before the source is read, so that a missing table fails at once.
    let existing = sink_columns(&client, schema, table).await?;
    if existing.is_none() && !create_table {
        return Err(CopyError::fatal(format!(
            "{what} does not exist (--create-table makes it from the source's columns)"
        )));
    }

    // READ COMMITTED whatever the database's default: under REPEATABLE READ or
    // SERIALIZABLE, the second of two concurrent publishes would fail with a serialization
    // error instead of finding the first one's record.
    client
        .batch_execute("START TRANSACTION ISOLATION LEVEL READ COMMITTED, READ WRITE")
        .await
        .map_err(|e| pg_error(&what, &e))?;

    // The first batch gives the source's columns, which the table's are matched to (or
    // made from) before COPY names them.
    let mut batches = batches;
    let first = match batches.next().await {
        Some(batch) => Some(batch?),
        None => None,
    };
    let columns = match existing {
        Some(columns) => columns,
        None => {
            let Some(first) = &first else {
                return Err(CopyError::fatal(format!(
                    "{what} does not exist, and the source gave no columns to make it from"
                )));
            };
            let statement = create::create_table_sql(&name, &first.schema())
                .map_err(|why| CopyError::fatal(format!("cannot create {what}: {why}")))?;
            client.batch_execute(&statement).await.map_err(|e| {
                use tokio_postgres::error::SqlState;
                // Another session (an earlier attempt, another job) made it since we
                // looked and committed: a retry finds it and loads into it.
                if matches!(e.code(), Some(&SqlState::DUPLICATE_TABLE | &SqlState::UNIQUE_VIOLATION)) {
                    CopyError::transient(format!("{what} was created meanwhile by another session"))
                } else {
                    pg_error(&format!("cannot create {what}"), &e)
                }
            })?;
            tracing::info!(job = %attempt.job_id, attempt = attempt.attempt, table = %shown,
                "created the sink table in the load's transaction: {statement}");
            sink_columns(&client, schema, table)
                .await?
                .ok_or_else(|| CopyError::transient(format!("{what} is gone right after being created")))?
        }
    };
    if columns.is_empty() {
        return Err(CopyError::fatal(format!("{what} has no columns to load")));
    }

    let (mut rows_read, mut bytes, mut rows_written) = (0u64, 0u64, 0u64);
    if let Some(first) = first {
        let first_schema = first.schema();
        let mapped = encode::map_columns(&first_schema, &columns, &shown).map_err(CopyError::fatal)?;
        let list: Vec<String> = mapped.iter().map(|c| quote_ident(&c.name)).collect();
        let copy = client
            .copy_in::<_, Bytes>(&format!("COPY {name} ({}) FROM STDIN", list.join(", ")))
            .await
            .map_err(|e| pg_error(&what, &e))?;
        futures::pin_mut!(copy);
        let mut next = Some(Ok(first));
        while let Some(batch) = next {
            // A failed source ends the load here: dropping the COPY aborts it, dropping the
            // client rolls the transaction back.
            let batch = batch?;
            if batch.num_rows() > 0 {
                // Sources keep one schema for the whole stream; checked so that a change
                // could never shift values into the wrong columns.
                let same = batch.schema().fields().len() == first_schema.fields().len()
                    && batch
                        .schema()
                        .fields()
                        .iter()
                        .zip(first_schema.fields())
                        .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
                if !same {
                    return Err(CopyError::fatal(format!(
                        "{what}: the source's columns changed after {rows_read} rows"
                    )));
                }
                let mut text = Vec::with_capacity(64 * batch.num_rows());
                encode::encode(&batch, &mapped, rows_read, &mut text)
                    .map_err(|why| CopyError::fatal(format!("{what}: {why}")))?;
                let len = text.len() as u64;
                copy.send(Bytes::from(text)).await.map_err(|e| pg_error(&what, &e))?;
                rows_read += batch.num_rows() as u64;
                bytes += len;
            }
            next = batches.next().await;
        }
        rows_written = copy.as_mut().finish().await.map_err(|e| pg_error(&what, &e))?;
    }

    let check = Consistency {
        rows_read,
        rows_written,
        verified: rows_read == rows_written,
        ..Consistency::default()
    };
    let staged = PgStaged {
        client,
        attempt: attempt.clone(),
        table: shown,
        commits: commits_table(state_schema(sink)),
        rows: rows_written,
    };
    Ok(Staged::new(rows_written, bytes, 0, check, Box::new(staged)))
}

/// Rows loaded in a transaction that is still open.
struct PgStaged {
    client: Client,
    attempt: AttemptId,
    /// `schema.table`, for the record and messages.
    table: String,
    /// The idempotency record's table, quoted for SQL.
    commits: String,
    rows: u64,
}

impl StagedOutput for PgStaged {
    fn publish(self: Box<Self>) -> futures::future::BoxFuture<'static, Result<Published, CopyError>> {
        Box::pin(async move {
            let what = format!(
                "publishing job {} attempt {} to sink table {}",
                self.attempt.job_id, self.attempt.attempt, self.table
            );
            let attempt = i32::try_from(self.attempt.attempt).unwrap_or(i32::MAX);
            let rows = i64::try_from(self.rows).unwrap_or(i64::MAX);
            // Waits if another attempt's transaction holds the same job id, until that one
            // commits (this insert then does nothing) or rolls back (this one inserts).
            let recorded = self
                .client
                .execute(
                    &format!(
                        "INSERT INTO {} (job_id, attempt, sink_table, rows) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (job_id) DO NOTHING",
                        self.commits
                    ),
                    &[&self.attempt.job_id, &attempt, &self.table, &rows],
                )
                .await
                .map_err(|e| pg_error(&what, &e))?;
            if recorded == 0 {
                tracing::info!(
                    job = %self.attempt.job_id,
                    attempt = self.attempt.attempt,
                    table = %self.table,
                    "another attempt already published this job; leaving the table as it is"
                );
                self.client
                    .batch_execute("ROLLBACK")
                    .await
                    .map_err(|e| pg_error(&what, &e))?;
                return Ok(Published::default());
            }
            // If the connection drops during COMMIT, whether it happened is unknown: the
            // error is transient, and the next attempt's publish finds the record if it did.
            self.client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| pg_error(&what, &e))?;
            Ok(Published::default())
        })
    }

    fn discard(self: Box<Self>) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move {
            // Closing the connection would roll back as well; this ends it at once.
            let _ = self.client.batch_execute("ROLLBACK").await;
        })
    }
}
