//! etcd's `Maintenance` service: what `etcdctl endpoint status`, `alarm`, `defrag` and
//! `move-leader` call.
//!
//! - `Status` answers from this member's Raft metrics: the leader, the commit index as
//!   `raftIndex`, the applied index, the term, whether it is a learner; `dbSize` is the bytes the
//!   node's data directory holds on disk (Raft log, state machine, snapshots); `version` is
//!   [`ETCD_VERSION`](super::ETCD_VERSION).
//! - `Alarm` keeps a real alarm list, but in this member's memory only: etcd replicates alarms
//!   and a `NOSPACE` alarm stops writes; here alarms are recorded, listed and cleared, and change
//!   nothing else (rskv raises none itself).
//! - `Defragment` succeeds and does nothing: RocksDB compacts in the background, and the engine
//!   offers no manual compaction yet.
//! - `MoveLeader` is rskv's leader transfer; like etcd, only the leader takes it.
//! - `Hash`, `HashKV` and `Snapshot` answer UNIMPLEMENTED until the multi-version store provides
//!   them; `Downgrade` is UNIMPLEMENTED (rskv has no cluster versions to downgrade).

use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Mutex;

use futures::Stream;
use openraft::ServerState;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::cluster::change_status;
use super::errors::EtcdError;
use super::observe;
use super::EtcdContext;
use super::ETCD_VERSION;
use crate::node::membership::ChangeError;
use crate::node::membership::MembershipAdmin;
use crate::raft::NodeId;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::etcdserverpb::alarm_request::AlarmAction;
use rskv_proto::etcd::etcdserverpb::maintenance_server::Maintenance;
use rskv_proto::etcd::etcdserverpb::AlarmType;

/// Implements `etcdserverpb.Maintenance` with the shared etcd context, the node's membership
/// administration (leader transfer), and its data directory (for `dbSize`).
pub struct EtcdMaintenanceService {
    ctx: EtcdContext,
    admin: MembershipAdmin,
    /// Measured for `dbSize`.
    data_dir: PathBuf,
    /// Active alarms, (member id, `AlarmType` value); this member's memory only.
    alarms: Mutex<BTreeSet<(NodeId, i32)>>,
}

impl EtcdMaintenanceService {
    /// The service of one node, whose data lives in `data_dir`.
    pub fn new(
        ctx: EtcdContext,
        admin: MembershipAdmin,
        data_dir: PathBuf,
    ) -> EtcdMaintenanceService {
        EtcdMaintenanceService {
            ctx,
            admin,
            data_dir,
            alarms: Mutex::new(BTreeSet::new()),
        }
    }

    fn alarm_list(&self) -> std::sync::MutexGuard<'_, BTreeSet<(NodeId, i32)>> {
        self.alarms.lock().unwrap_or_else(|p| p.into_inner())
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
            .alarm_list()
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
            db_size_quota: 0,
            downgrade_info: None,
        })
    }

    fn alarm_now(&self, req: etcd::AlarmRequest) -> Result<etcd::AlarmResponse, Status> {
        let action = AlarmAction::try_from(req.action).map_err(|_| {
            Status::invalid_argument(format!("unknown alarm action {}", req.action))
        })?;
        let alarm = AlarmType::try_from(req.alarm)
            .map_err(|_| Status::invalid_argument(format!("unknown alarm type {}", req.alarm)))?;
        let mut list = self.alarm_list();
        let alarms = match action {
            AlarmAction::Get => list
                .iter()
                .filter(|(_, a)| alarm == AlarmType::None || *a == alarm as i32)
                .map(|(member, a)| alarm_member(*member, *a))
                .collect(),
            AlarmAction::Activate => {
                if alarm == AlarmType::None {
                    return Err(Status::invalid_argument("cannot activate alarm NONE"));
                }
                let is_member = self.admin.members().iter().any(|m| m.id == req.member_id);
                if !is_member {
                    // etcd ignores an alarm for a member it does not know.
                    Vec::new()
                } else {
                    tracing::warn!(
                        member = req.member_id,
                        alarm = alarm.as_str_name(),
                        "alarm activated (this member's memory only)"
                    );
                    list.insert((req.member_id, alarm as i32));
                    vec![alarm_member(req.member_id, alarm as i32)]
                }
            }
            AlarmAction::Deactivate => {
                if list.remove(&(req.member_id, alarm as i32)) {
                    tracing::info!(
                        member = req.member_id,
                        alarm = alarm.as_str_name(),
                        "alarm deactivated"
                    );
                    vec![alarm_member(req.member_id, alarm as i32)]
                } else {
                    Vec::new()
                }
            }
        };
        Ok(etcd::AlarmResponse {
            header: Some(self.ctx.header()),
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

fn alarm_member(member_id: NodeId, alarm: i32) -> etcd::AlarmMember {
    etcd::AlarmMember { member_id, alarm }
}

fn alarm_name(alarm: i32) -> &'static str {
    AlarmType::try_from(alarm)
        .map(|a| a.as_str_name())
        .unwrap_or("UNKNOWN")
}

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

/// What an RPC the multi-version store will provide answers until then.
fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!(
        "{what} is not implemented by rskv yet: it comes with etcd's multi-version store"
    ))
}

#[tonic::async_trait]
impl Maintenance for EtcdMaintenanceService {
    #[tracing::instrument(skip_all, fields(node_id = self.ctx.member_id()))]
    async fn alarm(
        &self,
        request: Request<etcd::AlarmRequest>,
    ) -> Result<Response<etcd::AlarmResponse>, Status> {
        observe("etcd_alarm", async { self.alarm_now(request.into_inner()) }).await
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
        _request: Request<etcd::DefragmentRequest>,
    ) -> Result<Response<etcd::DefragmentResponse>, Status> {
        observe("etcd_defragment", async {
            tracing::info!("etcd Defragment: nothing to do (RocksDB compacts in the background)");
            Ok(etcd::DefragmentResponse {
                header: Some(self.ctx.header()),
            })
        })
        .await
    }

    async fn hash(
        &self,
        _request: Request<etcd::HashRequest>,
    ) -> Result<Response<etcd::HashResponse>, Status> {
        observe("etcd_hash", async { Err(not_yet("Hash")) }).await
    }

    async fn hash_kv(
        &self,
        _request: Request<etcd::HashKvRequest>,
    ) -> Result<Response<etcd::HashKvResponse>, Status> {
        observe("etcd_hash_kv", async { Err(not_yet("HashKV")) }).await
    }

    type SnapshotStream =
        Pin<Box<dyn Stream<Item = Result<etcd::SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        _request: Request<etcd::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        observe("etcd_snapshot", async { Err(not_yet("Snapshot")) }).await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.ctx.member_id()))]
    async fn move_leader(
        &self,
        request: Request<etcd::MoveLeaderRequest>,
    ) -> Result<Response<etcd::MoveLeaderResponse>, Status> {
        observe(
            "etcd_move_leader",
            self.move_leader_now(request.into_inner()),
        )
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
}
