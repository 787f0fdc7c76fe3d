//! Property-based fuzzing of the parsers that take bytes from outside: authentication keys
//! (pasted by operators), backup files (handed between machines), and the state machine's
//! commands (decoded from Raft messages and the log, then applied). None may panic; none may
//! accept altered input as if it were the original.
//!
//! A normal `cargo test` runs a few hundred cases per property (seconds). For a long run:
//! `PROPTEST_CASES=50000 cargo test --test fuzz` (about three minutes here; 20,000 took 75 s).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use proptest::prelude::*;
use proptest::test_runner::Config;
use sha2::{Digest, Sha256};
use shir::auth_key::{AuthKey, PREFIX};
use shir::connectors::ServiceType;
use shir::job_spec::{Consistency, DatasetRef, Format, JobSpec, Location, RetryPolicy};
use shir::schedule::slots::Trigger;
use shir::secrets::backup::{BackupContents, BackupError, KdfParams, open_backup, seal_backup_with};
use shir::secrets::{DataKey, SecretBytes, SecretString};
use shir::state::jobs::{Assignment, Job, Outcome};
use shir::state::schedules::{CatchUp, Overlap, Run, RunState, Schedule};
use shir::state::{
    AdminCertRecord, AuthKeySlot, Command, IrInfo, IrState, LinkedService, NodeRecord, ProxySettings, Sealed,
};

/// `cases` per property unless PROPTEST_CASES says otherwise (proptest reads it into its
/// default configuration; an explicit count would override it).
fn config(cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    // Failures are kept as named regression tests below, not in files beside the source.
    config.failure_persistence = None;
    config
}

// ---------------------------------------------------------------- authentication keys

fn sample_key() -> AuthKey {
    AuthKey::new(
        "0123456789abcdef0123456789abcdef".into(),
        1,
        &[7; 32],
        [0xa5; 32],
        vec!["10.0.0.1:8060".into(), "node-b.example.com:8060".into()],
    )
    .expect("a valid key")
}

/// A key text around `payload` with a correct checksum, so the parser reads its fields.
fn key_with_checksum(payload: &[u8]) -> String {
    let mut raw = payload.to_vec();
    raw.extend_from_slice(&Sha256::digest(payload)[..4]);
    format!("{PREFIX}{}", B64URL.encode(raw))
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_text_is_parsed_or_refused(text in any::<String>()) {
        let _ = AuthKey::parse(&text);
    }

    #[test]
    fn any_base64_after_the_prefix_is_parsed_or_refused(body in "[A-Za-z0-9_-]{0,300}") {
        let _ = AuthKey::parse(&format!("{PREFIX}{body}"));
    }

    /// Past the checksum, every field reader meets arbitrary bytes.
    #[test]
    fn any_payload_with_a_good_checksum_is_parsed_or_refused(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(key) = AuthKey::parse(&key_with_checksum(&payload)) {
            prop_assert!(key.validate().is_ok());
            prop_assert_eq!(AuthKey::parse(&key.encode()).map(|k| k.encode()), Ok(key.encode()));
        }
    }

    /// A real key's payload with bytes changed, checksum fixed up: a parse that succeeds
    /// yields a valid key that encodes back to exactly that payload.
    #[test]
    fn mutated_payloads_parse_to_what_they_say(edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let text = sample_key().encode();
        let raw = B64URL.decode(&text[PREFIX.len()..]).expect("base64");
        let mut payload = raw[..raw.len() - 4].to_vec();
        for (at, byte) in edits {
            let at = at % payload.len();
            payload[at] = byte;
        }
        let mutated = key_with_checksum(&payload);
        if let Ok(key) = AuthKey::parse(&mutated) {
            prop_assert!(key.validate().is_ok());
            prop_assert_eq!(key.encode(), mutated);
        }
    }

    /// A real key's text with characters changed, removed or inserted: refused, unless the
    /// change was whitespace (ignored) or left the text as it was.
    #[test]
    fn mutated_key_texts_are_refused(edits in proptest::collection::vec((0u8..3, any::<usize>(), any::<char>()), 1..4)) {
        let original = sample_key().encode();
        let mut chars: Vec<char> = original.chars().collect();
        for (kind, at, c) in edits {
            let at = at % (chars.len() + 1);
            match kind {
                0 if at < chars.len() => chars[at] = c,
                1 if at < chars.len() => { chars.remove(at); }
                _ => chars.insert(at, c),
            }
        }
        let mutated: String = chars.into_iter().collect();
        let compact: String = mutated.chars().filter(|c| !c.is_whitespace()).collect();
        match AuthKey::parse(&mutated) {
            Ok(key) => prop_assert_eq!(key.encode(), original.clone(), "{:?} parsed as another key", mutated),
            Err(_) => prop_assert_ne!(compact, original),
        }
    }
}

// ---------------------------------------------------------------- backup files

/// Cheap Argon2id costs: the fuzzer opens thousands of files.
const CHEAP: KdfParams = KdfParams {
    m_cost_kib: 64,
    t_cost: 1,
    p_cost: 1,
};

fn contents() -> BackupContents {
    BackupContents {
        ir_id: "0123456789abcdef0123456789abcdef".into(),
        node_json: "{\"name\":\"node2\"}".into(),
        ca_cert_pem: "-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n".into(),
        cert_pem: "-----BEGIN CERTIFICATE-----\nNODE\n-----END CERTIFICATE-----\n".into(),
        key_pem: SecretString::from("-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n"),
        data_key: DataKey::from_bytes(&[0x5a; 32]).expect("32 bytes"),
        created_at: 1_700_000_000,
    }
}

fn password() -> SecretBytes {
    SecretBytes::from(&b"correct horse"[..])
}

fn sealed_backup() -> &'static [u8] {
    static FILE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    FILE.get_or_init(|| seal_backup_with(&contents(), &password(), CHEAP).expect("seal"))
}

/// Where the header's fields end and its SHA-256 begins (see `secrets::backup`).
const BACKUP_FIELDS_LEN: usize = 70;
const BACKUP_HEADER_LEN: usize = 102;

/// The Argon2id costs a header asks for, so the fuzzer can skip files that would make it
/// spend a second per case (the bounds themselves are unit-tested in `secrets::backup`).
fn costly(file: &[u8]) -> bool {
    let u32_at = |at: usize| {
        file.get(at..at + 4)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()))
    };
    u32_at(10) > 4096 || u32_at(14) > 4 || u32_at(18) > 4
}

fn fix_header_checksum(file: &mut [u8]) {
    if file.len() >= BACKUP_HEADER_LEN {
        let sum = Sha256::digest(&file[..BACKUP_FIELDS_LEN]);
        file[BACKUP_FIELDS_LEN..BACKUP_HEADER_LEN].copy_from_slice(&sum);
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_bytes_are_not_a_backup(file in proptest::collection::vec(any::<u8>(), 0..600)) {
        prop_assert!(open_backup(&file, &password()).is_err());
    }

    /// A well-formed header (right magic, version and checksum) over arbitrary fields and
    /// body: refused, never a panic.
    #[test]
    fn any_body_under_a_good_header_is_refused(mut file in proptest::collection::vec(any::<u8>(), 102..600)) {
        file[..10].copy_from_slice(b"shirbkp\0\0\x01");
        // Costs small enough to derive a key each case; zeroes and other invalid ones included.
        for (at, most) in [(10, 256), (14, 2), (18, 2)] {
            let v = u32::from_be_bytes(file[at..at + 4].try_into().unwrap()) % (most + 1);
            file[at..at + 4].copy_from_slice(&v.to_be_bytes());
        }
        let body = (file.len() - BACKUP_HEADER_LEN) as u64;
        file[62..70].copy_from_slice(&body.to_be_bytes());
        fix_header_checksum(&mut file);
        prop_assert!(open_backup(&file, &password()).is_err());
    }

    /// A real backup with bytes changed, cut or added, with or without its header checksum
    /// recomputed: it does not open, unless it is byte for byte the original.
    #[test]
    fn altered_backups_do_not_open(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..5),
        cut in proptest::option::of(any::<usize>()),
        extra in proptest::collection::vec(any::<u8>(), 0..3),
        fix_checksum in any::<bool>(),
    ) {
        let original = sealed_backup();
        let mut file = original.to_vec();
        for (at, xor) in edits {
            let at = at % file.len();
            file[at] ^= xor;
        }
        if let Some(cut) = cut {
            file.truncate(cut % (file.len() + 1));
        }
        file.extend(extra);
        if fix_checksum {
            fix_header_checksum(&mut file);
        }
        prop_assume!(!costly(&file));
        match open_backup(&file, &password()) {
            Ok(opened) => {
                prop_assert_eq!(&file[..], original, "an altered backup opened");
                prop_assert_eq!(opened.ir_id, contents().ir_id);
            }
            Err(BackupError::Kdf(e)) => prop_assert!(false, "key derivation failed on a checked header: {}", e),
            Err(_) => prop_assert_ne!(&file[..], original),
        }
    }
}

// ---------------------------------------------------------------- state machine commands

fn sealed(s: &str) -> Sealed {
    Sealed(s.into())
}

fn node(id: u64, name: &str) -> NodeRecord {
    NodeRecord {
        id,
        name: name.into(),
        address: format!("127.0.0.{id}:8060"),
        cert_serial: format!("serial{id}"),
        cert_not_after: 2_000_000_000,
        cert_pem: String::new(),
        join_nonce: format!("nonce{id}"),
        joined_at: 1_700_000_000,
    }
}

fn job(id: &str) -> Job {
    let dataset = |path: &str, format| DatasetRef {
        service: "files".into(),
        location: Location::Path(path.into()),
        format,
    };
    let spec = JobSpec {
        name: id.into(),
        source: dataset("in/*.csv", Format::Csv(Default::default())),
        sink: dataset("out", Format::Binary),
        retry: RetryPolicy::default(),
        stall_timeout_ms: shir::job_spec::DEFAULT_STALL_TIMEOUT_MS,
        if_exists: Default::default(),
        create_table: false,
        mapping: Default::default(),
        bad_rows: None,
    };
    Job::queued(id.into(), spec, 1_700_000_000_000)
}

/// node3's report that job2's first attempt failed and may be retried.
fn retryable_failure(now_ms: i64) -> Command {
    Command::FinishJob {
        job_id: "job2".into(),
        attempt: 1,
        node: 3,
        outcome: Outcome::Failed {
            error: "boom".into(),
            retryable: true,
        },
        now_ms,
    }
}

/// One command of every kind, in an order that makes most of them apply: the seeds the
/// mutations start from.
fn seed_commands() -> Vec<Command> {
    let ir = IrInfo {
        id: "0123456789abcdef0123456789abcdef".into(),
        name: "fuzz".into(),
        created_at: 1_700_000_000,
        ca_cert_pem: "CA".into(),
        ca_key: sealed("ca-key"),
    };
    let slot = |s: &str| AuthKeySlot {
        generation: 1,
        secret: sealed(s),
    };
    let service = LinkedService {
        id: "svc1".into(),
        name: "files".into(),
        kind: ServiceType::Filesystem,
        fields: BTreeMap::from([("root".into(), "/data".into())]),
        secrets: BTreeMap::from([("password".into(), sealed("pw"))]),
        version: 1,
        created_at: 1,
        updated_at: 1,
    };
    let mut updated = service.clone();
    updated.version = 2;
    let assign = |job_id: &str, node, attempt| Assignment {
        job_id: job_id.into(),
        node,
        attempt,
        limit: 4,
    };
    vec![
        Command::Bootstrap {
            ir,
            first_node: node(1, "node1"),
            auth_keys: vec![slot("k1"), slot("k2")],
        },
        Command::AddNode { node: node(2, "node2") },
        Command::AddNode { node: node(3, "node3") },
        Command::Put {
            key: "k".into(),
            value: "v".into(),
        },
        Command::RegenerateKey {
            slot: 2,
            secret: sealed("k2b"),
        },
        Command::RecordAdminCert {
            record: AdminCertRecord {
                name: "ops".into(),
                serial: "a1".into(),
                not_after: 2_000_000_000,
                issued_at: 1,
            },
        },
        Command::PutLinkedService {
            service,
            previous_version: 0,
        },
        Command::PutLinkedService {
            service: updated,
            previous_version: 1,
        },
        Command::SetProxy {
            proxy: Some(ProxySettings {
                address: "proxy".into(),
                port: 3128,
                user: Some("u".into()),
                password: Some(sealed("p")),
                version: 1,
            }),
            version: 1,
        },
        Command::SubmitJob { job: job("job1") },
        Command::SubmitJob { job: job("job2") },
        Command::SubmitJob { job: job("job3") },
        Command::AssignJobs {
            assignments: vec![assign("job1", 2, 1), assign("job2", 3, 1), assign("job3", 2, 1)],
            now_ms: 1_700_000_001_000,
        },
        Command::BeginPublish {
            job_id: "job1".into(),
            attempt: 1,
            node: 2,
        },
        Command::FinishJob {
            job_id: "job1".into(),
            attempt: 1,
            node: 2,
            outcome: Outcome::Succeeded {
                rows: 10,
                bytes: 100,
                files: 1,
                files_skipped: 0,
                check: Consistency::default(),
                columns: Vec::new(),
                columns_total: 0,
            },
            now_ms: 1_700_000_002_000,
        },
        retryable_failure(1_700_000_002_000),
        Command::RequeueNode {
            node: 2,
            jobs: vec![("job3".into(), 1)],
            now_ms: 1_700_000_003_000,
        },
        Command::CancelJob {
            job_id: "job3".into(),
            now_ms: 1_700_000_004_000,
        },
        Command::SetNodeLimit {
            node: 2,
            limit: Some(8),
        },
        Command::SetNodeLimit { node: 3, limit: None },
        Command::Batch(vec![
            Command::Put {
                key: "a".into(),
                value: "b".into(),
            },
            Command::SubmitJob { job: job("job4") },
        ]),
        Command::SetProxy {
            proxy: None,
            version: 2,
        },
        Command::RemoveNode { name: "node3".into() },
        Command::DeleteLinkedService {
            name: "files".into(),
            id: "svc1".into(),
        },
        Command::CreateSchedule { schedule: schedule() },
        Command::FireSlot {
            name: "tick".into(),
            id: "sched1".into(),
            run: run(1_700_000_010_000, RunState::Fired, Some("job5")),
            job: Some(job("job5")),
        },
        Command::FireSlot {
            name: "tick".into(),
            id: "sched1".into(),
            run: run(1_700_000_011_000, RunState::Queued, None),
            job: None,
        },
        Command::StartQueuedRun {
            name: "tick".into(),
            id: "sched1".into(),
            slot_ms: 1_700_000_011_000,
            job: Some(job("job6")),
            reason: None,
            now_ms: 1_700_000_012_000,
        },
        Command::SetSchedulePaused {
            name: "tick".into(),
            id: "sched1".into(),
            paused: true,
        },
        Command::DeleteSchedule {
            name: "tick".into(),
            id: "sched1".into(),
        },
    ]
}

fn schedule() -> Schedule {
    Schedule {
        id: "sched1".into(),
        name: "tick".into(),
        trigger: Trigger::Every {
            every_ms: 1_000,
            anchor_ms: 0,
        },
        template: Default::default(),
        catch_up: CatchUp::All,
        catch_up_limit: 100,
        overlap: Overlap::Queue,
        keep_runs: 10,
        paused: false,
        created_at_ms: 1_700_000_000_000,
        earliest_ms: 1_700_000_000_000,
        last_slot_ms: None,
        runs: Vec::new(),
    }
}

fn run(slot_ms: i64, state: RunState, job: Option<&str>) -> Run {
    Run {
        slot_ms,
        recorded_at_ms: slot_ms,
        fired_at_ms: job.map(|_| slot_ms),
        job: job.map(str::to_string),
        state,
        reason: None,
        manual: false,
    }
}

/// The state after the seed commands up to `upto`, so mutated commands meet a state with
/// nodes, services and jobs in every phase.
fn state_after(upto: usize) -> IrState {
    let mut state = IrState::default();
    for cmd in &seed_commands()[..upto] {
        state.apply(cmd);
    }
    state
}

/// As Raft carries a command between nodes (bincode, `raft::network`).
fn wire(cmd: &Command) -> Vec<u8> {
    shir::raft::network::encode(cmd).expect("encode a command")
}

fn decode_wire(bytes: &[u8]) -> Option<Command> {
    shir::raft::network::decode::<Command>(bytes).ok()
}

/// Applies `cmd` to two copies of `state`: must not panic, and must be deterministic; the
/// dispatcher's schedule planning must not panic on the result either.
fn apply_twice(state: &IrState, cmd: &Command) -> Result<(), TestCaseError> {
    let (mut a, mut b) = (state.clone(), state.clone());
    let (ra, rb) = (a.apply(cmd), b.apply(cmd));
    prop_assert_eq!(ra, rb);
    prop_assert_eq!(&a, &b);
    let _ = shir::schedule::fire::plan(&a, 1_700_000_020_000);
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary bytes as a Raft message and as a command, in both encodings a node reads
    /// (bincode from peers, JSON from its log): decoded or refused, never a panic.
    #[test]
    fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        type Append = openraft::raft::AppendEntriesRequest<shir::raft::TypeConfig>;
        let _ = shir::raft::network::decode::<Append>(&bytes);
        let _ = serde_json::from_slice::<Command>(&bytes);
        if let Some(cmd) = decode_wire(&bytes) {
            apply_twice(&IrState::default(), &cmd)?;
        }
    }

    /// Seed commands with bytes of their encoding changed, applied at any point of the
    /// seed history: no panic, same result on every node.
    #[test]
    fn mutated_commands_apply_without_panicking(
        seed in any::<prop::sample::Index>(),
        upto in any::<prop::sample::Index>(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let seeds = seed_commands();
        let mut bytes = wire(seed.get(&seeds));
        for (at, byte) in edits {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        if let Some(cmd) = decode_wire(&bytes) {
            apply_twice(&state_after(upto.index(seeds.len() + 1)), &cmd)?;
        }
    }

    /// Integer fields set to extremes (what byte mutations rarely hit exactly).
    #[test]
    fn extreme_numbers_apply_without_panicking(
        seed in any::<prop::sample::Index>(),
        upto in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        value in prop::sample::select(vec![0u64, 1, u64::from(u32::MAX), i64::MAX as u64, u64::MAX - 1, u64::MAX]),
    ) {
        let seeds = seed_commands();
        let mut bytes = wire(seed.get(&seeds));
        if bytes.len() >= 8 {
            let at = at.index(bytes.len() - 7);
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        if let Some(cmd) = decode_wire(&bytes) {
            apply_twice(&state_after(upto.index(seeds.len() + 1)), &cmd)?;
        }
    }

    /// Seed commands in any order, repeated: the state machine meets commands that no
    /// longer (or do not yet) make sense.
    #[test]
    fn seed_commands_in_any_order_apply_without_panicking(order in proptest::collection::vec(any::<prop::sample::Index>(), 0..40)) {
        let seeds = seed_commands();
        let mut state = IrState::default();
        for i in order {
            let cmd = i.get(&seeds);
            apply_twice(&state, cmd)?;
            state.apply(cmd);
        }
    }
}

/// Inputs the fuzzer found that panicked `apply` (integer overflow in debug builds, silent
/// wrap-around in release), kept as regression cases.
#[test]
fn found_by_fuzzing_overflowing_numbers_are_refused_or_saturate() {
    let seeds = seed_commands();
    // A retryable failure at the end of time: the retry time saturates.
    let mut state = state_after(13);
    let failed = retryable_failure(i64::MAX - 1);
    assert_eq!(state.apply(&failed), shir::state::CommandResult::Ok);
    assert_eq!(state.jobs["job2"].not_before_ms, i64::MAX);
    // A job submitted with the last attempt number cannot be assigned a next one.
    let mut last = job("job9");
    last.attempt = u32::MAX;
    let mut state = state_after(3);
    state.apply(&Command::SubmitJob { job: last });
    let assign = Command::AssignJobs {
        assignments: vec![Assignment {
            job_id: "job9".into(),
            node: 2,
            attempt: 0,
            limit: 4,
        }],
        now_ms: 0,
    };
    assert!(
        matches!(state.apply(&assign), shir::state::CommandResult::Batch(r) if r[0] != shir::state::CommandResult::Ok)
    );
    // Versions and node ids at the end of their range.
    let Command::PutLinkedService { mut service, .. } = seeds[6].clone() else {
        unreachable!()
    };
    service.version = 0;
    let mut state = state_after(7);
    let update = Command::PutLinkedService {
        service,
        previous_version: u64::MAX,
    };
    assert!(matches!(state.apply(&update), shir::state::CommandResult::Rejected(_)));
    let mut state = state_after(1);
    let last_id = Command::AddNode {
        node: node(u64::MAX, "node9"),
    };
    assert!(matches!(state.apply(&last_id), shir::state::CommandResult::Rejected(_)));
    let Command::Bootstrap { ir, auth_keys, .. } = seeds[0].clone() else {
        unreachable!()
    };
    let bootstrap = Command::Bootstrap {
        ir,
        first_node: node(u64::MAX, "node1"),
        auth_keys,
    };
    assert!(matches!(
        IrState::default().apply(&bootstrap),
        shir::state::CommandResult::Rejected(_)
    ));
}

/// Batches nested deeper than any proposer makes: refused when decoded (from a peer's
/// bincode or the log's JSON), not a stack overflow that aborts the node.
#[test]
fn deeply_nested_batches_are_refused_not_a_stack_overflow() {
    let batch_tag = {
        let empty = wire(&Command::Batch(Vec::new()));
        empty[..4].to_vec()
    };
    let depth = 200_000;
    let mut bytes = Vec::with_capacity(depth * 12 + 12);
    for _ in 0..depth {
        bytes.extend_from_slice(&batch_tag);
        bytes.extend_from_slice(&1u64.to_le_bytes());
    }
    bytes.extend_from_slice(&batch_tag);
    bytes.extend_from_slice(&0u64.to_le_bytes());
    assert!(
        decode_wire(&bytes).is_none(),
        "a batch nested {depth} deep was accepted"
    );
    let json = format!("{}[]{}", "{\"Batch\":[".repeat(depth), "]}".repeat(depth));
    assert!(serde_json::from_str::<Command>(&json).is_err());
    // What a proposer makes still decodes, in both encodings; one level more does not.
    let mut nested = Command::Put {
        key: "k".into(),
        value: "v".into(),
    };
    for level in 1..=shir::state::MAX_BATCH_DEPTH + 1 {
        nested = Command::Batch(vec![nested]);
        let fits = level <= shir::state::MAX_BATCH_DEPTH;
        assert_eq!(
            decode_wire(&wire(&nested)).as_ref() == Some(&nested),
            fits,
            "depth {level}"
        );
        let json = serde_json::to_vec(&nested).expect("JSON");
        assert_eq!(serde_json::from_slice::<Command>(&json).is_ok(), fits, "depth {level}");
    }
}
