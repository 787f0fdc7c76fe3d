//! PostgreSQL sources (a table or a query) and sinks (a table, loaded with COPY), staged in
//! an open transaction and published by committing it together with the job's idempotency
//! record.

use super::{AttemptId, Batches, CopyError, Counters, Endpoint, Staged};

/// Runs the table read or query and yields its rows as record batches.
pub async fn read_table(source: &Endpoint, counters: &Counters) -> Result<Batches, CopyError> {
    let _ = (source, counters);
    Err(CopyError::fatal("reading PostgreSQL is not implemented yet"))
}

/// Loads `batches` into the sink table inside a transaction left open for publish.
pub async fn write_table(
    attempt: &AttemptId,
    sink: &Endpoint,
    batches: Batches,
    counters: &Counters,
) -> Result<Staged, CopyError> {
    let _ = (attempt, sink, batches, counters);
    Err(CopyError::fatal("writing PostgreSQL is not implemented yet"))
}
