//! The version of the wire protocol between nodes. A joiner sends it in its `Join`, every
//! node in each heartbeat; a node of a version this one does not speak is refused in one
//! line instead of having its messages misread: the groundwork for rolling upgrades, where
//! a version range will let old and new nodes overlap.

/// This build's protocol version. Raise it with any change to `proto/shir.proto` that an
/// older node would misread (a field that changes meaning, a message that changes shape),
/// and with any change to the Raft commands, which travel between nodes as bincode, where
/// a field added to a job spec or an outcome is a different shape.
/// 1: typed wire (enums, report phases as a `oneof`, messages instead of JSON).
/// 2: `--if-exists` in job specs and skipped files in outcomes.
/// 3: CSV schemas, null markers, time formats, column mapping and bad rows in job specs;
/// written columns and skipped rows in outcomes.
/// 4: schedules (their commands, which an older node could not decode, and Admin rpcs).
pub const PROTOCOL_VERSION: u32 = 4;

/// The oldest version this build still speaks. Builds before version 1 sent none (0);
/// version 1's Raft commands lack version 2's fields, version 2's lack version 3's, and
/// version 3 cannot decode the schedule commands of version 4.
pub const OLDEST_COMPATIBLE: u32 = 4;

/// A peer or joiner of a protocol version this node does not speak.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("protocol version {theirs}, this IR speaks {PROTOCOL_VERSION}")]
pub struct ProtocolMismatch {
    pub theirs: u32,
}

/// Whether a node announcing version `theirs` may take part.
pub fn check(theirs: u32) -> Result<(), ProtocolMismatch> {
    if (OLDEST_COMPATIBLE..=PROTOCOL_VERSION).contains(&theirs) {
        Ok(())
    } else {
        Err(ProtocolMismatch { theirs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_versions_spoken_here_pass() {
        assert_eq!(check(PROTOCOL_VERSION), Ok(()));
        for other in [0, PROTOCOL_VERSION + 1, 999] {
            let refused = check(other).expect_err("another version");
            assert_eq!(
                refused.to_string(),
                format!("protocol version {other}, this IR speaks {PROTOCOL_VERSION}")
            );
        }
    }
}
