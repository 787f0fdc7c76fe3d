//! Filesystem sources and sinks: CSV, JSON Lines, Parquet and binary copies, staged as
//! temporary files next to their targets and published by atomic rename.

use super::{AttemptId, Batches, CopyError, Counters, Endpoint, Staged};

/// Opens the files that `source.location` names (a path under the root, a glob or a
/// directory) and yields their rows as record batches.
pub async fn read_table(source: &Endpoint, counters: &Counters) -> Result<Batches, CopyError> {
    let _ = (source, counters);
    Err(CopyError::fatal("reading files is not implemented yet"))
}

/// Writes `batches` to a staging file next to the target file.
pub async fn write_table(
    attempt: &AttemptId,
    sink: &Endpoint,
    batches: Batches,
    counters: &Counters,
) -> Result<Staged, CopyError> {
    let _ = (attempt, sink, batches, counters);
    Err(CopyError::fatal("writing files is not implemented yet"))
}

/// Copies files as they are, with their sizes and modification times.
pub async fn copy_binary(
    attempt: &AttemptId,
    source: &Endpoint,
    sink: &Endpoint,
    counters: &Counters,
) -> Result<Staged, CopyError> {
    let _ = (attempt, source, sink, counters);
    Err(CopyError::fatal("binary copies are not implemented yet"))
}
