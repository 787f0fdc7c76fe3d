//! The operator calls as one type: each `AdminCall` is parsed once from the wire (the gRPC
//! method it arrived on, or a forwarded call's method name and bytes) and says itself where
//! it runs, whether running it twice is harmless, and how long it may wait for the
//! dispatcher. `admin` executes them; `services` generates the gRPC handlers from the same
//! list.

use prost::Message;
use tonic::Status;

use super::forward::{Calling, FORWARD_PATIENCE, FORWARD_TIMEOUT};
use crate::proto;

/// Where a call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// On the node called, from its own state (after catching up with the dispatcher where
    /// a read must see every acknowledged write).
    Here,
    /// On the dispatcher: here if this node leads, else forwarded.
    Dispatcher,
}

use crate::timing::{READ_PATIENCE, STATUS_ATTEMPT, STATUS_PATIENCE};

/// Declares `AdminCall` with one variant per call, named as its gRPC method, holding its
/// request, and the gRPC handlers of the `Admin` service (in `services`), from one list.
macro_rules! admin_calls {
    (
        rpcs { $($variant:ident($request:ty) -> $reply:ty, fn $rpc:ident;)* }
        internal { $($internal:ident($internal_request:ty);)* }
    ) => {
        /// One operator call with its request.
        // A call lives for one RPC and is moved a few times, never stored in bulk: the size
        // of its largest request (a job submission, with all its flags) costs nothing
        // worth a box per variant in the macro.
        #[allow(clippy::large_enum_variant)]
        #[derive(Clone, Debug)]
        pub enum AdminCall {
            $($variant($request),)*
            $($internal($internal_request),)*
        }

        impl AdminCall {
            /// The call's name on the wire (its gRPC method, and a forwarded call's `method`).
            pub fn method(&self) -> &'static str {
                match self {
                    $(AdminCall::$variant(_) => stringify!($variant),)*
                    $(AdminCall::$internal(_) => stringify!($internal),)*
                }
            }

            /// Parses a forwarded call: its method name and request bytes.
            pub fn decode(method: &str, request: &[u8]) -> Result<Self, Status> {
                match method {
                    $(stringify!($variant) => decode(request).map(AdminCall::$variant),)*
                    $(stringify!($internal) => decode(request).map(AdminCall::$internal),)*
                    other => Err(Status::unimplemented(format!("unknown admin call '{other}'"))),
                }
            }

            /// The request's bytes, as forwarded.
            pub fn encode_request(&self) -> Vec<u8> {
                match self {
                    $(AdminCall::$variant(request) => request.encode_to_vec(),)*
                    $(AdminCall::$internal(request) => request.encode_to_vec(),)*
                }
            }
        }

        /// The gRPC handlers of the `Admin` service: each checks the caller is an operator,
        /// then routes its call (`Services::admin_call`).
        macro_rules! admin_handlers {
            ($services:ty) => {
                #[tonic::async_trait]
                impl crate::proto::admin_server::Admin for $services {
                    $(
                        async fn $rpc(
                            &self,
                            req: tonic::Request<$request>,
                        ) -> Result<tonic::Response<$reply>, Status> {
                            self.admin_call(AdminCall::$variant, req).await
                        }
                    )*
                }
            };
        }
        pub(super) use admin_handlers;
    };
}

admin_calls! {
    rpcs {
    Status(proto::StatusRequest) -> proto::StatusReply, fn status;
    KeyShow(proto::KeyShowRequest) -> proto::KeyShowReply, fn key_show;
    KeyRegenerate(proto::KeyRegenerateRequest) -> proto::KeyShowReply, fn key_regenerate;
    NodeRemove(proto::NodeRemoveRequest) -> proto::NodeRemoveReply, fn node_remove;
    AdminCertIssue(proto::AdminCertIssueRequest) -> proto::AdminCertIssueReply, fn admin_cert_issue;
    Put(proto::PutRequest) -> proto::PutReply, fn put;
    Get(proto::GetRequest) -> proto::GetReply, fn get;
    LocalView(proto::LocalViewRequest) -> proto::LocalViewReply, fn local_view;
    LinkedServiceCreate(proto::LinkedServiceCreateRequest) -> proto::LinkedServiceInfo, fn linked_service_create;
    LinkedServiceUpdate(proto::LinkedServiceUpdateRequest) -> proto::LinkedServiceInfo, fn linked_service_update;
    LinkedServiceDelete(proto::LinkedServiceDeleteRequest) -> proto::LinkedServiceDeleteReply, fn linked_service_delete;
    LinkedServiceList(proto::LinkedServiceListRequest) -> proto::LinkedServiceListReply, fn linked_service_list;
    LinkedServiceShow(proto::LinkedServiceShowRequest) -> proto::LinkedServiceInfo, fn linked_service_show;
    LinkedServiceTest(proto::LinkedServiceTestRequest) -> proto::LinkedServiceTestReply, fn linked_service_test;
    CredentialEncrypt(proto::CredentialEncryptRequest) -> proto::CredentialEncryptReply, fn credential_encrypt;
    ProxySet(proto::ProxySetRequest) -> proto::ProxyInfo, fn proxy_set;
    ProxyShow(proto::ProxyShowRequest) -> proto::ProxyInfo, fn proxy_show;
    ProxyClear(proto::ProxyClearRequest) -> proto::ProxyInfo, fn proxy_clear;
    JobSubmit(proto::JobSubmitRequest) -> proto::JobSubmitReply, fn job_submit;
    JobList(proto::JobListRequest) -> proto::JobListReply, fn job_list;
    JobShow(proto::JobShowRequest) -> proto::JobInfo, fn job_show;
    JobCancel(proto::JobCancelRequest) -> proto::JobInfo, fn job_cancel;
    NodeSetLimit(proto::NodeSetLimitRequest) -> proto::NodeSetLimitReply, fn node_set_limit;
    JobHistory(proto::JobHistoryRequest) -> proto::JobHistoryInfo, fn job_history;
    JobHistorySeed(proto::JobHistorySeedRequest) -> proto::JobHistoryInfo, fn job_history_seed;
    ScheduleCreate(proto::ScheduleCreateRequest) -> proto::ScheduleInfo, fn schedule_create;
    ScheduleList(proto::ScheduleListRequest) -> proto::ScheduleListReply, fn schedule_list;
    ScheduleShow(proto::ScheduleNameRequest) -> proto::ScheduleInfo, fn schedule_show;
    ScheduleRuns(proto::ScheduleNameRequest) -> proto::ScheduleRunsReply, fn schedule_runs;
    SchedulePause(proto::ScheduleNameRequest) -> proto::ScheduleInfo, fn schedule_pause;
    ScheduleResume(proto::ScheduleNameRequest) -> proto::ScheduleInfo, fn schedule_resume;
    ScheduleRunNow(proto::ScheduleNameRequest) -> proto::ScheduleRun, fn schedule_run_now;
    ScheduleDelete(proto::ScheduleNameRequest) -> proto::ScheduleDeleteReply, fn schedule_delete;
    }
    // Not operator calls, only forwarded: a node asks the dispatcher for its read index
    // (`admin::read_index`); the request is empty.
    internal {
    ReadIndex(());
    }
}

impl AdminCall {
    /// Where the call runs.
    pub fn place(&self) -> Place {
        match self {
            // Views of this node; reads and connection tests that must work from wherever
            // the operator asks; sealing, which needs only the data key every node holds.
            AdminCall::LocalView(_)
            | AdminCall::Get(_)
            | AdminCall::LinkedServiceList(_)
            | AdminCall::LinkedServiceShow(_)
            | AdminCall::LinkedServiceTest(_)
            | AdminCall::ProxyShow(_)
            | AdminCall::CredentialEncrypt(_) => Place::Here,
            _ => Place::Dispatcher,
        }
    }

    /// Whether running the call twice is harmless: reads are; a write is not (the first
    /// may have committed before its answer was lost).
    pub fn idempotent(&self) -> bool {
        matches!(
            self,
            AdminCall::Status(_)
                | AdminCall::KeyShow(_)
                | AdminCall::JobList(_)
                | AdminCall::JobShow(_)
                | AdminCall::ScheduleList(_)
                | AdminCall::ScheduleShow(_)
                | AdminCall::ScheduleRuns(_)
                | AdminCall::ReadIndex(_)
        )
    }

    /// How the call goes to the dispatcher: how long it keeps trying, how long one try may
    /// take, and whether it may be tried again after a try that may have run.
    pub fn calling(&self) -> Calling {
        let (patience, attempt) = match self {
            AdminCall::Status(_) => (STATUS_PATIENCE, STATUS_ATTEMPT),
            AdminCall::ReadIndex(_) => (READ_PATIENCE, STATUS_ATTEMPT),
            _ => (FORWARD_PATIENCE, FORWARD_TIMEOUT),
        };
        Calling {
            patience,
            attempt,
            idempotent: self.idempotent(),
        }
    }
}

fn decode<T: Message + Default>(bytes: &[u8]) -> Result<T, Status> {
    T::decode(bytes).map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))
}
