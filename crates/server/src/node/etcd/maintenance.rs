//! etcd's `Maintenance` service: what `etcdctl endpoint status`, `alarm`, `defrag` and
//! `move-leader` call.
//!
//! - `Status` answers from this member's Raft metrics: the leader, the commit index as
//!   `raftIndex`, the applied index, the term, whether it is a learner; `dbSize` is the bytes the
//!   node's data directory holds on disk (Raft log, state machine, snapshots); `version` is
//!   [`ETCD_VERSION`](super::ETCD_VERSION).
//! - `Alarm` raises and clears alarms through the log, as etcd does
//!   ([`rskv_storage::state_machine::alarms`]): every member lists the same, and while a
//!   `NOSPACE` alarm is raised, puts, transactions with a put and lease grants are refused
//!   "etcdserver: mvcc: database space exceeded" (deletes and reads go on). With
//!   `limits.quota_backend_bytes` (etcd's `--quota-backend-bytes`), every member raises `NOSPACE`
//!   for itself once its own data directory holds more ([`EtcdMaintenanceService::watch_quota`]),
//!   through the leader over the peer port (`rskv.raft.v2.MemberAlarms`, served here too).
//! - `Defragment` runs a full RocksDB compaction of the state machine's column families (what
//!   deletions and history compaction left behind is dropped at once, not when RocksDB would get
//!   to it); the memory engine has nothing to do.
//! - `MoveLeader` is rskv's leader transfer; like etcd, only the leader takes it.
//! - `Hash` is a CRC-32 of every record of the state machine (a consistent export), `HashKV` one
//!   of the store's history up to a revision: members that applied the same log agree on both.
//! - `Snapshot` streams a consistent backup of the state machine in etcd's own format, a bbolt
//!   file (`rskv_storage::etcd_backup::write`; what `etcdctl snapshot save` writes to a file, and
//!   `etcdctl snapshot status` and `snapshot restore` read); `kv_server --restore-backup` loads
//!   it, or etcd's, into the members of a new cluster.
//! - `Downgrade` is UNIMPLEMENTED (rskv has no cluster versions to downgrade).

use std::path::Path;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use openraft::ServerState;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::cluster::change_status;
use super::errors::status_of;
use super::errors::EtcdError;
use super::forward::Answered;
use super::forward::Routed;
use super::observe;
use super::propose;
use super::EtcdContext;
use super::ETCD_VERSION;
use crate::node::membership::ChangeError;
use crate::node::membership::MembershipAdmin;
use crate::node::proposer::Proposer;
use crate::node::read_barrier::ReadBarrier;
use crate::node::read_view::ReadView;
use crate::raft::Command;
use crate::raft::NodeId;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::etcdserverpb::alarm_request::AlarmAction;
use rskv_proto::etcd::etcdserverpb::maintenance_client::MaintenanceClient;
use rskv_proto::etcd::etcdserverpb::maintenance_server::Maintenance;
use rskv_proto::etcd::etcdserverpb::AlarmType;
use rskv_proto::raft as pb;
use rskv_proto::raft::member_alarms_client::MemberAlarmsClient;
use rskv_proto::raft::member_alarms_server::MemberAlarms;
use rskv_storage::state_machine::alarms::AlarmSet;

/// Bytes per `Snapshot` message.
const SNAPSHOT_CHUNK: usize = 64 * 1024;

/// Implements `etcdserverpb.Maintenance` with the shared etcd context, the node's membership
/// administration (leader transfer), its data directory (for `dbSize`) and a read view of the
/// state machine (hashes and backups).
pub struct EtcdMaintenanceService {
    ctx: EtcdContext,
    view: ReadView,
    admin: MembershipAdmin,
    /// Measured for `dbSize`.
    data_dir: PathBuf,
    /// `limits.quota_backend_bytes` (0: none), reported as `dbSizeQuota`.
    quota: u64,
    /// The cluster's active alarms, as this member has applied them.
    alarms: Arc<AlarmSet>,
    /// Raises and clears alarms.
    proposer: Arc<Proposer>,
    /// The leader's alarm listings wait on it.
    reads: Arc<ReadBarrier>,
}

impl EtcdMaintenanceService {
    /// The service of one node, whose data lives in `data_dir`, held to `quota` bytes (0: no
    /// quota; [`EtcdMaintenanceService::watch_quota`] enforces it).
    pub fn new(
        ctx: EtcdContext,
        view: ReadView,
        admin: MembershipAdmin,
        (data_dir, quota): (PathBuf, u64),
        (alarms, proposer, reads): (Arc<AlarmSet>, Arc<Proposer>, Arc<ReadBarrier>),
    ) -> EtcdMaintenanceService {
        EtcdMaintenanceService {
            ctx,
            view,
            admin,
            data_dir,
            quota,
            alarms,
            proposer,
            reads,
        }
    }

    async fn status_now(&self) -> Result<etcd::StatusResponse, Status> {
        let m = self.ctx.raft_metrics();
        let dir = self.data_dir.clone();
        let db_size = tokio::task::spawn_blocking(move || disk_usage(&dir))
            .await
            .unwrap_or(0);
        let db_size = i64::try_from(db_size).unwrap_or(i64::MAX);
        let me = self.ctx.member_id();
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == me);
        let mut errors: Vec<String> = self
            .alarms
            .list()
            .iter()
            .map(|(member, alarm)| format!("memberID:{member} alarm:{}", alarm_name(*alarm)))
            .collect();
        if m.current_leader.is_none() {
            errors.push(EtcdError::NoLeader.message().to_string());
        }
        Ok(etcd::StatusResponse {
            header: Some(self.ctx.header()),
            version: ETCD_VERSION.to_string(),
            db_size,
            db_size_in_use: db_size,
            leader: m.current_leader.unwrap_or(0),
            raft_index: m.local_committed.map(|l| l.index).unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            errors,
            is_learner: !voter || m.state == ServerState::Learner,
            storage_version: String::new(),
            db_size_quota: i64::try_from(self.quota).unwrap_or(i64::MAX),
            downgrade_info: None,
        })
    }

    /// Raises `NOSPACE` for this member whenever its data directory holds more than its quota,
    /// checking every [`QUOTA_CHECK`]; runs until the task is dropped. Every member measures its
    /// own, as etcd's do (their logs, snapshots and RocksDB files differ even where the state
    /// machines agree), and raises the alarm through the leader over the peer port
    /// ([`MemberAlarms::raise`]), so no user is needed with auth on. Once disarmed while still
    /// over quota, the alarm is raised again, as etcd's is.
    pub async fn watch_quota(self: Arc<Self>) {
        let quota = self.quota;
        let me = self.ctx.member_id();
        loop {
            tokio::time::sleep(QUOTA_CHECK).await;
            if self
                .alarms
                .list()
                .contains(&(me, AlarmType::Nospace as i32))
            {
                continue;
            }
            let dir = self.data_dir.clone();
            let used = tokio::task::spawn_blocking(move || disk_usage(&dir))
                .await
                .unwrap_or(0);
            if used <= quota {
                continue;
            }
            let raise = Request::new(pb::RaiseAlarmRequest {
                member_id: me,
                alarm: AlarmType::Nospace as i32,
            });
            match MemberAlarms::raise(&*self, raise).await {
                Ok(answer) if answer.get_ref().raised => tracing::warn!(
                    used,
                    quota,
                    "data directory over limits.quota_backend_bytes: NOSPACE alarm raised; \
                     writes that grow the store are refused until it is disarmed"
                ),
                Ok(_) => {}
                Err(status) => tracing::debug!(%status, "raising the NOSPACE alarm failed"),
            }
        }
    }

    /// Raises (`activate`) or clears `alarm` for `member` through the log, here on the leader;
    /// answers the revision after it, or `None` when there was nothing to change: etcd ignores
    /// an alarm for a member it does not know, and a clear of one not raised.
    async fn change_alarm(
        &self,
        member: NodeId,
        alarm: AlarmType,
        activate: bool,
    ) -> Result<Option<i64>, Status> {
        let active = self.alarms.list().contains(&(member, alarm as i32));
        let known = self.admin.members().iter().any(|m| m.id == member);
        if (activate && (!known || active)) || (!activate && !active) {
            return Ok(None);
        }
        let change = Command::Alarm {
            member,
            alarm: alarm as i32,
            activate,
        };
        let (_, revision) = propose(&self.proposer, change, "an alarm").await?;
        tracing::warn!(
            member,
            alarm = alarm.as_str_name(),
            activate,
            "alarm changed"
        );
        Ok(Some(revision))
    }

    /// Lists, raises or clears alarms; a change is proposed by the leader (a follower forwards
    /// it) and answered once applied.
    async fn alarm_now(
        &self,
        request: Request<etcd::AlarmRequest>,
    ) -> Result<etcd::AlarmResponse, Status> {
        let action = AlarmAction::try_from(request.get_ref().action).map_err(|_| {
            Status::invalid_argument(format!("unknown alarm action {}", request.get_ref().action))
        })?;
        let alarm = AlarmType::try_from(request.get_ref().alarm).map_err(|_| {
            Status::invalid_argument(format!("unknown alarm type {}", request.get_ref().alarm))
        })?;
        if action == AlarmAction::Activate && alarm == AlarmType::None {
            return Err(Status::invalid_argument("cannot activate alarm NONE"));
        }
        let req = match self
            .ctx
            .forwarder()
            .to_leader(request, |ch, r| async move {
                MaintenanceClient::new(ch).alarm(r).await
            })
            .await?
        {
            Routed::Here(req) => req,
            Routed::Forwarded(response) => return Ok(response),
        };
        if action == AlarmAction::Get {
            // As etcd's, which serves it through Raft: every change committed before it shows.
            self.reads.wait().await.map_err(status_of)?;
            let alarms = self
                .alarms
                .list()
                .into_iter()
                .filter(|(_, a)| alarm == AlarmType::None || *a == alarm as i32)
                .map(|(member, a)| alarm_member(member, a))
                .collect();
            return Ok(etcd::AlarmResponse {
                header: Some(self.ctx.header()),
                alarms,
            });
        }
        let activate = action == AlarmAction::Activate;
        let member = alarm_member(req.member_id, alarm as i32);
        let (alarms, header) = match self.change_alarm(req.member_id, alarm, activate).await? {
            Some(revision) => (vec![member], self.ctx.header_at(revision)),
            // etcd answers the alarm when it was raised already, nothing when it ignored one.
            None if activate && self.alarms.list().contains(&(req.member_id, alarm as i32)) => {
                (vec![member], self.ctx.header())
            }
            None => (Vec::new(), self.ctx.header()),
        };
        Ok(etcd::AlarmResponse {
            header: Some(header),
            alarms,
        })
    }

    async fn move_leader_now(
        &self,
        req: etcd::MoveLeaderRequest,
    ) -> Result<etcd::MoveLeaderResponse, Status> {
        if self.admin.require_leader().is_err() {
            return Err(EtcdError::NotLeader.into());
        }
        let to = match self.admin.transfer(Some(req.target_id)).await {
            Ok(to) => to,
            // etcd answers "bad leader transferee" for a target that is no voting member.
            Err(ChangeError::Refused(why)) => {
                tracing::info!(%why, "etcd MoveLeader refused");
                return Err(EtcdError::BadLeaderTransferee.into());
            }
            Err(e) => return Err(change_status(e)),
        };
        tracing::info!(to, "etcd MoveLeader: leadership moved");
        Ok(etcd::MoveLeaderResponse {
            header: Some(self.ctx.header()),
        })
    }
}

impl Answered for pb::RaiseAlarmResponse {
    fn answered_by(&mut self, _id: NodeId) {}
}

/// The peer port's side of a member raising an alarm about itself (see `raft.proto`).
#[tonic::async_trait]
impl MemberAlarms for EtcdMaintenanceService {
    #[tracing::instrument(skip_all, fields(node_id = self.ctx.member_id()))]
    async fn raise(
        &self,
        request: Request<pb::RaiseAlarmRequest>,
    ) -> Result<Response<pb::RaiseAlarmResponse>, Status> {
        let alarm = match AlarmType::try_from(request.get_ref().alarm) {
            Ok(a @ (AlarmType::Nospace | AlarmType::Corrupt)) => a,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "alarm type {} cannot be raised (NOSPACE or CORRUPT)",
                    request.get_ref().alarm
                )))
            }
        };
        let req = match self
            .ctx
            .forwarder()
            .to_leader(request, |ch, r| async move {
                MemberAlarmsClient::new(ch).raise(r).await
            })
            .await?
        {
            Routed::Here(req) => req,
            Routed::Forwarded(response) => return Ok(Response::new(response)),
        };
        let raised = self.change_alarm(req.member_id, alarm, true).await?;
        Ok(Response::new(pb::RaiseAlarmResponse {
            raised: raised.is_some(),
        }))
    }
}

fn alarm_member(member_id: NodeId, alarm: i32) -> etcd::AlarmMember {
    etcd::AlarmMember { member_id, alarm }
}

fn alarm_name(alarm: i32) -> &'static str {
    AlarmType::try_from(alarm)
        .map(|a| a.as_str_name())
        .unwrap_or("UNKNOWN")
}

/// How often a member measures its data directory against `limits.quota_backend_bytes`.
const QUOTA_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Bytes of every file under `dir` (0 for what cannot be read: a size report must not fail).
fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => disk_usage(&entry.path()),
            Ok(t) if t.is_file() => entry.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

fn storage_status(e: std::io::Error) -> Status {
    Status::internal(format!("reading the state machine: {e}"))
}

#[tonic::async_trait]
impl Maintenance for EtcdMaintenanceService {
    #[tracing::instrument(skip_all, fields(node_id = self.ctx.member_id()))]
    async fn alarm(
        &self,
        request: Request<etcd::AlarmRequest>,
    ) -> Result<Response<etcd::AlarmResponse>, Status> {
        observe("etcd_alarm", async {
            // Listing alarms is open to everyone, as etcd's; changing them is administration.
            if request.get_ref().action != etcd::alarm_request::AlarmAction::Get as i32 {
                self.ctx.auth().require_root(request.metadata())?;
            }
            self.alarm_now(request).await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.ctx.member_id()))]
    async fn status(
        &self,
        _request: Request<etcd::StatusRequest>,
    ) -> Result<Response<etcd::StatusResponse>, Status> {
        observe("etcd_status", self.status_now()).await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.ctx.member_id()))]
    async fn defragment(
        &self,
        request: Request<etcd::DefragmentRequest>,
    ) -> Result<Response<etcd::DefragmentResponse>, Status> {
        observe("etcd_defragment", async {
            self.ctx.auth().require_root(request.metadata())?;
            let started = std::time::Instant::now();
            self.view.defragment().await.map_err(storage_status)?;
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "etcd Defragment: state machine compacted"
            );
            Ok(etcd::DefragmentResponse {
                header: Some(self.ctx.header()),
            })
        })
        .await
    }

    async fn hash(
        &self,
        request: Request<etcd::HashRequest>,
    ) -> Result<Response<etcd::HashResponse>, Status> {
        observe("etcd_hash", async {
            self.ctx.auth().require_root(request.metadata())?;
            let revision = self.ctx.revision();
            let hash = self.view.hash().await.map_err(storage_status)?;
            Ok(etcd::HashResponse {
                header: Some(self.ctx.header_at(revision)),
                hash,
            })
        })
        .await
    }

    async fn hash_kv(
        &self,
        request: Request<etcd::HashKvRequest>,
    ) -> Result<Response<etcd::HashKvResponse>, Status> {
        observe("etcd_hash_kv", async {
            self.ctx.auth().require_root(request.metadata())?;
            let revision = self.ctx.revision();
            let (hash, hash_revision, compact_revision) = self
                .view
                .hash_kv(request.get_ref().revision)
                .await
                .map_err(storage_status)?
                .map_err(|e| super::kv::mvcc_status(&e))?;
            Ok(etcd::HashKvResponse {
                header: Some(self.ctx.header_at(revision)),
                hash,
                compact_revision,
                hash_revision,
            })
        })
        .await
    }

    type SnapshotStream =
        Pin<Box<dyn Stream<Item = Result<etcd::SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        request: Request<etcd::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        observe("etcd_snapshot", async {
            self.ctx.auth().require_root(request.metadata())?;
            let header = self.ctx.header();
            let mut backup = self
                .view
                .backup(&self.data_dir)
                .await
                .map_err(storage_status)?;
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            // Read on a blocking thread: the export produces the bytes as they are read.
            tokio::task::spawn_blocking(move || {
                let mut sent = 0u64;
                loop {
                    let mut blob = vec![0u8; SNAPSHOT_CHUNK];
                    let mut filled = 0;
                    while filled < blob.len() {
                        match std::io::Read::read(&mut backup, &mut blob[filled..]) {
                            Ok(0) => break,
                            Ok(n) => filled += n,
                            Err(e) => {
                                let _ = tx.blocking_send(Err(Status::internal(format!(
                                    "backup failed after {sent} bytes: {e}"
                                ))));
                                return;
                            }
                        }
                    }
                    blob.truncate(filled);
                    sent += filled as u64;
                    let last = filled < SNAPSHOT_CHUNK;
                    let response = etcd::SnapshotResponse {
                        header: Some(header),
                        remaining_bytes: u64::from(!last),
                        blob: blob.into(),
                        version: String::new(),
                    };
                    if tx.blocking_send(Ok(response)).is_err() || last {
                        tracing::debug!(bytes = sent, "etcd Snapshot streamed");
                        return;
                    }
                }
            });
            Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as Self::SnapshotStream)
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.ctx.member_id()))]
    async fn move_leader(
        &self,
        request: Request<etcd::MoveLeaderRequest>,
    ) -> Result<Response<etcd::MoveLeaderResponse>, Status> {
        observe("etcd_move_leader", async {
            self.ctx.auth().require_root(request.metadata())?;
            self.move_leader_now(request.into_inner()).await
        })
        .await
    }

    async fn downgrade(
        &self,
        _request: Request<etcd::DowngradeRequest>,
    ) -> Result<Response<etcd::DowngradeResponse>, Status> {
        observe("etcd_downgrade", async {
            Err(Status::unimplemented(
                "Downgrade is not supported by rskv: it has no cluster version to downgrade",
            ))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_should_sum_nested_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), [0u8; 10]).expect("write");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/b"), [0u8; 32]).expect("write");
        assert_eq!(disk_usage(dir.path()), 42);
        assert_eq!(disk_usage(&dir.path().join("missing")), 0);
    }

    /// Members of different builds must read each other's alarms: the field numbers are pinned
    /// by these bytes.
    #[test]
    fn the_member_alarm_messages_should_keep_their_encoding() {
        use prost::Message;
        let request = pb::RaiseAlarmRequest {
            member_id: 300,
            alarm: AlarmType::Nospace as i32,
        };
        let hex = |bytes: Vec<u8>| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(request.encode_to_vec()), "08ac021001");
        assert_eq!(
            hex(pb::RaiseAlarmResponse { raised: true }.encode_to_vec()),
            "0801"
        );
        let decoded =
            pb::RaiseAlarmRequest::decode(request.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(decoded, request);
    }
}
