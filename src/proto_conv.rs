//! Conversions between the wire (`proto`) and the domain types, in one place: handlers and
//! clients convert at the edge with `From`/`TryFrom` and work with domain types inside.

use crate::job_spec::Submission;
use crate::proto;

impl From<proto::JobSubmitRequest> for Submission {
    fn from(r: proto::JobSubmitRequest) -> Self {
        Submission {
            name: r.name,
            source: r.source,
            sink: r.sink,
            source_format: r.source_format,
            sink_format: r.sink_format,
            binary: r.binary,
            csv_no_header: r.csv_no_header,
            csv_delimiter: r.csv_delimiter,
            max_attempts: r.max_attempts,
            retry_interval_ms: r.retry_interval_ms,
            stall_timeout_ms: r.stall_timeout_ms,
        }
    }
}
