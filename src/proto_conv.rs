//! Conversions between the wire (`proto`) and the domain types, in one place: handlers and
//! clients convert at the edge with `From`/`TryFrom` and work with domain types inside.

use crate::job_spec::{Consistency, Submission, WrittenColumn};
use crate::node::liveness::Health;
use crate::proto;
use crate::state::jobs::{JobState, Outcome};

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
            allow_empty: r.allow_empty,
            encoding: r.encoding,
            if_exists: r.if_exists,
            schema: r.schema,
            create_table: r.create_table,
            csv_nulls: r.csv_null,
            schema_columns: r.schema_columns,
            timestamp_format: r.timestamp_format,
            date_format: r.date_format,
            columns: r.columns,
            renames: r.rename,
            on_bad_row: r.on_bad_row,
            bad_rows: r.bad_rows,
        }
    }
}

/// A schedule's job template as the wire shows it.
impl From<&Submission> for proto::JobSubmitRequest {
    fn from(s: &Submission) -> Self {
        let s = s.clone();
        proto::JobSubmitRequest {
            name: s.name,
            source: s.source,
            sink: s.sink,
            source_format: s.source_format,
            sink_format: s.sink_format,
            binary: s.binary,
            csv_no_header: s.csv_no_header,
            csv_delimiter: s.csv_delimiter,
            max_attempts: s.max_attempts,
            retry_interval_ms: s.retry_interval_ms,
            stall_timeout_ms: s.stall_timeout_ms,
            allow_empty: s.allow_empty,
            encoding: s.encoding,
            if_exists: s.if_exists,
            schema: s.schema,
            create_table: s.create_table,
            csv_null: s.csv_nulls,
            schema_columns: s.schema_columns,
            timestamp_format: s.timestamp_format,
            date_format: s.date_format,
            columns: s.columns,
            rename: s.renames,
            on_bad_row: s.on_bad_row,
            bad_rows: s.bad_rows,
        }
    }
}

impl From<JobState> for proto::JobState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Queued => proto::JobState::Queued,
            JobState::Running => proto::JobState::Running,
            JobState::Succeeded => proto::JobState::Succeeded,
            JobState::Failed => proto::JobState::Failed,
            JobState::Cancelled => proto::JobState::Cancelled,
        }
    }
}

/// A wire value with no domain meaning: unset where it is required, or a number this build
/// does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

impl TryFrom<proto::JobState> for JobState {
    type Error = Malformed;
    fn try_from(s: proto::JobState) -> Result<Self, Malformed> {
        match s {
            proto::JobState::Queued => Ok(JobState::Queued),
            proto::JobState::Running => Ok(JobState::Running),
            proto::JobState::Succeeded => Ok(JobState::Succeeded),
            proto::JobState::Failed => Ok(JobState::Failed),
            proto::JobState::Cancelled => Ok(JobState::Cancelled),
            proto::JobState::Unspecified => Err(Malformed("no job state".into())),
        }
    }
}

impl From<Consistency> for proto::ConsistencyCheck {
    fn from(c: Consistency) -> Self {
        proto::ConsistencyCheck {
            rows_read: c.rows_read,
            rows_written: c.rows_written,
            source_checksum: c.source_checksum,
            sink_checksum: c.sink_checksum,
            verified: c.verified,
            rows_skipped: c.rows_skipped,
        }
    }
}

impl From<proto::ConsistencyCheck> for Consistency {
    fn from(c: proto::ConsistencyCheck) -> Self {
        Consistency {
            rows_read: c.rows_read,
            rows_written: c.rows_written,
            source_checksum: c.source_checksum,
            sink_checksum: c.sink_checksum,
            verified: c.verified,
            rows_skipped: c.rows_skipped,
        }
    }
}

impl From<WrittenColumn> for proto::WrittenColumn {
    fn from(c: WrittenColumn) -> Self {
        proto::WrittenColumn {
            name: c.name,
            data_type: c.data_type,
        }
    }
}

impl From<proto::WrittenColumn> for WrittenColumn {
    fn from(c: proto::WrittenColumn) -> Self {
        WrittenColumn {
            name: c.name,
            data_type: c.data_type,
        }
    }
}

impl From<Outcome> for proto::JobOutcome {
    fn from(o: Outcome) -> Self {
        use proto::job_outcome::Outcome as Wire;
        let outcome = match o {
            Outcome::Succeeded {
                rows,
                bytes,
                files,
                files_skipped,
                check,
                columns,
                columns_total,
            } => Wire::Succeeded(proto::JobSucceeded {
                rows,
                bytes,
                files,
                check: Some(check.into()),
                files_skipped,
                columns: columns.into_iter().map(Into::into).collect(),
                columns_total,
            }),
            Outcome::Failed { error, retryable } => Wire::Failed(proto::JobFailed { error, retryable }),
            Outcome::Cancelled => Wire::Cancelled(proto::JobCancelled {}),
        };
        proto::JobOutcome { outcome: Some(outcome) }
    }
}

impl TryFrom<proto::JobOutcome> for Outcome {
    type Error = Malformed;
    fn try_from(o: proto::JobOutcome) -> Result<Self, Malformed> {
        use proto::job_outcome::Outcome as Wire;
        match o.outcome {
            Some(Wire::Succeeded(s)) => Ok(Outcome::Succeeded {
                rows: s.rows,
                bytes: s.bytes,
                files: s.files,
                files_skipped: s.files_skipped,
                check: s
                    .check
                    .ok_or_else(|| Malformed("a success without its consistency check".into()))?
                    .into(),
                columns: s.columns.into_iter().map(Into::into).collect(),
                columns_total: s.columns_total,
            }),
            Some(Wire::Failed(f)) => Ok(Outcome::Failed {
                error: f.error,
                retryable: f.retryable,
            }),
            Some(Wire::Cancelled(_)) => Ok(Outcome::Cancelled),
            None => Err(Malformed("no outcome (succeeded, failed or cancelled)".into())),
        }
    }
}

impl From<Health> for proto::NodeHealth {
    fn from(h: Health) -> Self {
        match h {
            Health::Online => proto::NodeHealth::Online,
            Health::Offline => proto::NodeHealth::Offline,
            Health::Limited => proto::NodeHealth::Limited,
        }
    }
}

// The words `status`, `job list` and `job show` print, in tables and in `--json`: scripts
// read them, so they are the ones the wire carried as strings before it had enums. A value
// this build does not know (a newer node's) prints as "Unknown".

impl proto::JobState {
    pub fn label(self) -> &'static str {
        JobState::try_from(self).map_or("Unknown", JobState::as_str)
    }
}

impl proto::NodeHealth {
    pub fn label(self) -> &'static str {
        match self {
            proto::NodeHealth::Online => "Online",
            proto::NodeHealth::Offline => "Offline",
            proto::NodeHealth::Limited => "Limited",
            proto::NodeHealth::Unspecified => "Unknown",
        }
    }
}

impl proto::NodeRole {
    pub fn label(self) -> &'static str {
        match self {
            proto::NodeRole::Dispatcher => "Dispatcher",
            proto::NodeRole::Worker => "Worker",
            proto::NodeRole::Unspecified => "Unknown",
        }
    }
}

impl proto::RaftRole {
    pub fn label(self) -> &'static str {
        match self {
            proto::RaftRole::Voter => "Voter",
            proto::RaftRole::Learner => "Learner",
            proto::RaftRole::Unspecified => "Unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_checks_survive_the_wire() {
        let outcomes = [
            Outcome::Succeeded {
                rows: 3,
                bytes: 30,
                files: 1,
                files_skipped: 2,
                check: Consistency {
                    rows_read: 3,
                    rows_written: 3,
                    source_checksum: Some("xxh3-128:00".into()),
                    sink_checksum: None,
                    verified: true,
                    rows_skipped: 1,
                },
                columns: vec![WrittenColumn {
                    name: "amount".into(),
                    data_type: "Decimal128(12, 2)".into(),
                }],
                columns_total: 300,
            },
            Outcome::Failed {
                error: "connection refused".into(),
                retryable: true,
            },
            Outcome::Cancelled,
        ];
        for o in outcomes {
            let wire = prost::Message::encode_to_vec(&proto::JobOutcome::from(o.clone()));
            let back: proto::JobOutcome = prost::Message::decode(wire.as_slice()).unwrap();
            assert_eq!(Outcome::try_from(back), Ok(o));
        }
        let empty = proto::JobOutcome { outcome: None };
        assert!(Outcome::try_from(empty).is_err());
        let unchecked = proto::JobOutcome {
            outcome: Some(proto::job_outcome::Outcome::Succeeded(proto::JobSucceeded::default())),
        };
        assert!(Outcome::try_from(unchecked).is_err());
    }

    #[test]
    fn states_print_as_they_always_did() {
        for s in [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            assert_eq!(proto::JobState::from(s).label(), s.as_str());
            assert_eq!(JobState::try_from(proto::JobState::from(s)), Ok(s));
        }
        let labels: Vec<&str> = [Health::Online, Health::Offline, Health::Limited]
            .into_iter()
            .map(|h| proto::NodeHealth::from(h).label())
            .collect();
        assert_eq!(labels, ["Online", "Offline", "Limited"]);
    }
}
