//! The node: wires config → storage → network → openraft → gRPC services, and runs them until a
//! shutdown signal.
//!
//! [`Node::start`] opens the storage, creates the Raft instance and bootstraps a brand-new cluster
//! from `cluster.initial_members`. [`Node::serve`] runs the listeners (the client API, the
//! Raft transport on its own peer port, and HTTP for `/metrics` and `/health`) until the
//! `shutdown` future completes, then stops accepting requests, lets in-flight ones finish and
//! shuts openraft down. Tests call both with a pre-bound loopback
//! listener on port 0 and a oneshot as the shutdown signal; the binary passes Ctrl-C/SIGTERM.

pub mod admission;
pub mod auth;
pub mod cluster_service;
pub mod compactor;
pub mod etcd;
pub mod history_feed;
pub mod http;
pub mod jwt;
pub mod kv_service;
pub mod lease_hold;
pub mod limits;
pub mod membership;
pub mod proposer;
pub mod raft_service;
pub mod read_barrier;
pub mod read_view;
pub mod shutdown;
pub mod tls;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use openraft::storage::RaftLogStorage;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::RaftLogReader;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::config::Engine;
use crate::error::Error;
use crate::error::Result;
use crate::node::lease_hold::LeaseHold;
use crate::raft::network::NetworkFactory;
use crate::raft::network::PeerLiveness;
use crate::raft::NodeId;
use crate::raft::NodeInfo;
use crate::raft::Raft;
use rskv_proto::etcd::etcdserverpb::auth_server::AuthServer as EtcdAuthServer;
use rskv_proto::etcd::etcdserverpb::cluster_server::ClusterServer as EtcdClusterServer;
use rskv_proto::etcd::etcdserverpb::kv_server::KvServer as EtcdKvServer;
use rskv_proto::etcd::etcdserverpb::lease_server::LeaseServer as EtcdLeaseServer;
use rskv_proto::etcd::etcdserverpb::maintenance_server::MaintenanceServer as EtcdMaintenanceServer;
use rskv_proto::etcd::etcdserverpb::watch_server::WatchServer as EtcdWatchServer;
use rskv_proto::etcd::v3electionpb::election_server::ElectionServer as EtcdElectionServer;
use rskv_proto::etcd::v3lockpb::lock_server::LockServer as EtcdLockServer;
use rskv_proto::kv::cluster_server::ClusterServer;
use rskv_proto::kv::kv_server::KvServer;
use rskv_proto::raft::admission_server::AdmissionServer;
use rskv_proto::raft::member_alarms_server::MemberAlarmsServer;
use rskv_proto::raft::raft_server::RaftServer;
use rskv_storage::events::EventBus;
use rskv_storage::log_throttle::LogThrottle;
use rskv_storage::memory::MemoryEngine;
use rskv_storage::rocks::RocksEngine;
use rskv_storage::KvEngine;
use rskv_storage::LogStore;
use rskv_storage::SnapshotInbox;
use rskv_storage::SnapshotTrigger;
use rskv_storage::StateMachine;

/// Largest gRPC message between peers and largest reply to a client (Raft batches and scan pages;
/// snapshots are chunked far below this).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// The three sockets a node serves on, bound before the node starts (so tests can bind port 0).
pub struct Listeners {
    /// Client gRPC API.
    pub client: TcpListener,
    /// Raft transport between nodes.
    pub peer: TcpListener,
    /// `/metrics` and `/health`; `None` disables them.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses `config` names.
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming the address that cannot be bound.
    pub async fn bind(config: &Config) -> Result<Listeners> {
        async fn bind(addr: std::net::SocketAddr, what: &str) -> Result<TcpListener> {
            TcpListener::bind(addr)
                .await
                .map_err(|e| Error::unavailable_by(format!("cannot listen on {addr} ({what})"), e))
        }
        Ok(Listeners {
            client: bind(config.listen_addr, "listen_addr").await?,
            peer: bind(config.peer_listen()?, "peer_listen_addr").await?,
            metrics: Some(bind(config.metrics_listen()?, "metrics_addr").await?),
        })
    }
}

/// A running Raft member. Its fields are private: each service is built with the few handles it
/// needs (the client API gets a proposer, the read barrier, a read view, the event bus and the
/// request limiter; the Raft service gets Raft, the snapshot inbox, the lease hold and the leader
/// contact), so what a service can reach is written in its constructor. Cluster administration,
/// `/health` and shutdown belong to the node's lifecycle and see all of it.
pub struct Node {
    /// This node's id.
    id: NodeId,
    /// The effective configuration.
    config: Arc<Config>,
    /// The openraft handle (proposals, reads barriers, metrics).
    raft: Raft,
    /// The state machine's engine, read directly after a linearizable barrier or for stale reads.
    engine: Arc<dyn KvEngine>,
    /// Where snapshots sent by a leader arrive.
    snapshot_inbox: Arc<SnapshotInbox>,
    /// Apply events and the store's revision: hooks subscribe to the events, watch streams wait
    /// on the revision (and on shutdown) to read history further.
    events: Arc<EventBus>,
    /// In-flight client request limit; also refuses new requests while draining.
    limiter: Arc<limits::RequestLimiter>,
    /// Leadership confirmations shared by concurrent linearizable reads.
    reads: Arc<read_barrier::ReadBarrier>,
    /// Write proposals, grouped into shared log entries under load.
    proposer: Arc<proposer::Proposer>,
    /// Asks openraft for a snapshot every `raft.snapshot_every` writes.
    snapshots: Arc<SnapshotTrigger>,
    /// A handle on the state machine openraft applies to, for what status reports of it (open
    /// client sessions); only openraft's apply changes it.
    state_machine: StateMachine,
    /// When replication from a leader last arrived (see [`LeaderContact`]).
    leader_contact: Arc<LeaderContact>,
    /// Keeps a restarted node out of elections while a lease it granted may still run.
    lease_hold: Arc<LeaseHold>,
    /// Where the node keeps its data (etcd's `Status` reports its size as `dbSize`).
    data_dir: PathBuf,
    /// TLS of the listeners and of the node's own connections (`[tls]`).
    tls: tls::NodeTls,
    /// etcd's auth checks, shared by both APIs.
    auth: auth::Authorizer,
}

/// When this node last received replication (or a heartbeat) from a leader. openraft keeps
/// naming the last leader it knew until another one wins an election, which a follower cut off
/// from a quorum never sees; this tells `/health` and status that the leader has gone quiet.
#[derive(Debug)]
pub struct LeaderContact {
    /// Times are kept as milliseconds since this instant.
    epoch: std::time::Instant,
    /// Milliseconds since `epoch` of the last contact plus one; 0: none yet.
    last: std::sync::atomic::AtomicU64,
}

impl LeaderContact {
    fn new() -> LeaderContact {
        LeaderContact {
            epoch: std::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Records a contact now.
    pub fn touch(&self) {
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        self.last
            .fetch_max(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// Time since the last contact, or since the node started if there was none.
    pub fn quiet_for(&self) -> Duration {
        let last = self.last.load(std::sync::atomic::Ordering::Relaxed);
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(last.saturating_sub(1)))
    }
}

/// Loads `backup` into the state machine of a node that holds nothing yet (see
/// `storage.restore_backup`); does nothing, saying so, for a node that already holds data.
async fn restore_backup(
    engine: &dyn KvEngine,
    log_store: &mut LogStore,
    storage: &crate::config::StorageConfig,
    backup: &Path,
) -> Result<()> {
    if storage.engine != Engine::Rocksdb {
        return Err(Error::config(
            "`storage.restore_backup` needs the RocksDB engine (the memory engine keeps nothing \
             across a restart)",
        ));
    }
    let log_state = log_store
        .get_log_state()
        .await
        .map_err(|e| Error::storage("reading the raft log state", e))?;
    if log_state.last_log_id.is_some() || engine.applied_state()?.last_applied.is_some() {
        tracing::info!(backup = %backup.display(), "the node already holds data: backup not restored");
        return Ok(());
    }
    let verify = !storage.restore_skip_hash_check;
    let meta = rskv_storage::state_machine::restore_backup(engine, backup, verify)
        .map_err(|e| Error::storage(format!("restoring backup {}", backup.display()), e))?;
    tracing::info!(backup = %backup.display(), taken_at = ?meta.last_log_id, "state machine restored from a backup");
    Ok(())
}

impl Node {
    /// Opens storage under `data_dir`, starts Raft, and initializes the cluster if this node has
    /// never been part of one.
    ///
    /// # Errors
    /// [`Error::Storage`] when the data directory cannot be opened (e.g. another node holds it),
    /// [`Error::Config`] for an invalid configuration, [`Error::Raft`] if openraft fails to start.
    pub async fn start(config: Config, data_dir: &Path) -> Result<Arc<Node>> {
        config.validate()?;
        crate::metrics::install();
        let span = tracing::info_span!("node", node_id = config.node_id);
        async move {
            let log_dir = data_dir.join("raft_log");
            let snapshot_dir = data_dir.join("snapshots");
            std::fs::create_dir_all(&log_dir)?;
            std::fs::create_dir_all(&snapshot_dir)?;
            let snapshot_inbox = Arc::new(SnapshotInbox::open(&snapshot_dir));
            let mut log_store = LogStore::open(&log_dir).map_err(|e| {
                Error::storage(format!("opening raft log in {}", log_dir.display()), e)
            })?;
            let engine: Arc<dyn KvEngine> = match config.storage.engine {
                Engine::Memory => Arc::new(MemoryEngine::new()),
                Engine::Rocksdb => {
                    let dir = data_dir.join("state_machine");
                    Arc::new(RocksEngine::open(&dir).map_err(|e| {
                        Error::storage(format!("opening state machine in {}", dir.display()), e)
                    })?)
                }
            };
            if let Some(backup) = &config.storage.restore_backup {
                restore_backup(&*engine, &mut log_store, &config.storage, backup).await?;
            }
            let events = Arc::new(EventBus::new(config.events.watch_buffer));
            let snapshots = SnapshotTrigger::new(config.raft.snapshot_every);
            let state_machine = StateMachine::open(
                engine.clone(),
                &snapshot_dir,
                events.clone(),
                snapshots.clone(),
            )
            .await?;
            state_machine
                .auth()
                .set_token_ttl(Duration::from_secs(config.auth.token_ttl_secs));
            let tls = tls::NodeTls::load(&config.tls)?;
            let jwt = match jwt::TokenSpec::parse(&config.auth.token).map_err(Error::config)? {
                jwt::TokenSpec::Simple => None,
                jwt::TokenSpec::Jwt { key, method, ttl } => Some(Arc::new(
                    jwt::JwtKeys::load(&key, &method, ttl)
                        .map_err(|why| Error::config(format!("`auth.token`: {why}")))?,
                )),
            };
            let auth = auth::Authorizer::new(state_machine.auth(), jwt);
            let network = NetworkFactory::new(
                config.raft.snapshot_chunk_bytes as usize,
                peer_dial(&config, &tls),
                config.peer_liveness(),
            );
            // A node that had acknowledged a leader stays out of elections for a lease after
            // it starts (lease_hold.rs); openraft starts without elections then.
            let acknowledged_a_leader = log_store
                .get_log_reader()
                .await
                .read_vote()
                .await
                .map_err(|e| Error::storage("reading the vote", e))?
                .is_some_and(|vote| vote.is_committed());
            let mut raft_config = config.openraft_config()?;
            raft_config.enable_elect = !acknowledged_a_leader;
            let raft = Raft::new(
                config.node_id,
                Arc::new(raft_config),
                network,
                log_store,
                state_machine.clone(),
            )
            .await
            .map_err(|e| Error::raft("starting raft", e))?;
            let lease_hold = if acknowledged_a_leader {
                LeaseHold::after_start(
                    &raft,
                    config.node_id,
                    Duration::from_millis(config.raft.election_timeout_max_ms),
                )
                .await?
            } else {
                LeaseHold::none()
            };
            {
                let raft = raft.clone();
                let snapshots = snapshots.clone();
                tokio::spawn(async move {
                    while snapshots.due().await {
                        if let Err(e) = raft.trigger().snapshot().await {
                            tracing::debug!(error = %e, "snapshot trigger stopped");
                            break;
                        }
                    }
                });
            }
            let limiter = Arc::new(limits::RequestLimiter::new(
                config.limits.max_inflight_requests,
            ));
            let reads = read_barrier::ReadBarrier::new(
                raft.clone(),
                config.linearizer(),
                Duration::from_millis(config.limits.request_timeout_ms),
                config.raft.election_timeout_max_ms,
            );
            let proposer = Arc::new(proposer::Proposer::new(
                raft.clone(),
                Duration::from_millis(config.limits.request_timeout_ms),
                config.raft.max_inflight_proposals,
                config.raft.election_timeout_max_ms,
            ));
            let node = Arc::new(Node {
                id: config.node_id,
                state_machine,
                leader_contact: Arc::new(LeaderContact::new()),
                lease_hold: Arc::new(lease_hold),
                reads,
                proposer,
                snapshots,
                events,
                limiter,
                config: Arc::new(config),
                raft,
                engine,
                snapshot_inbox,
                data_dir: data_dir.to_path_buf(),
                tls,
                auth,
            });
            node.bootstrap().await?;
            Ok(node)
        }
        .instrument(span)
        .await
    }

    /// Whether this node, started with `--join`, has yet to be admitted: it has no Raft state,
    /// or the membership it knows has it as a learner (it stopped before it was promoted, and
    /// asks again; one added to stay a learner is told so again), or it knows no membership yet
    /// (the memory engine's state, membership included, comes back from the leader after a
    /// restart). Asking is harmless for a member: adding it again changes nothing, and promoting
    /// a voter neither.
    async fn awaits_admission(&self) -> bool {
        if !self.raft.is_initialized().await.unwrap_or(true) {
            return true;
        }
        let id = self.id;
        self.raft
            .with_raft_state(move |state| {
                let membership = state.membership_state.effective().membership();
                let member = membership.get_node(&id).is_some();
                let unknown = membership.nodes().next().is_none();
                unknown || (member && !membership.voter_ids().any(|v| v == id))
            })
            .await
            .unwrap_or(false)
    }

    /// Initializes a never-initialized node with the bootstrap membership. Every initial member
    /// does this with the same set; openraft makes the identical initial entries agree.
    async fn bootstrap(&self) -> Result<()> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::raft("reading whether the cluster is initialized", e))?;
        if initialized {
            tracing::info!("recovered existing raft state");
            return Ok(());
        }
        if !self.config.cluster.join.is_empty() {
            tracing::info!(via = ?self.config.cluster.join, "empty node: will ask the cluster to add it");
            return Ok(());
        }
        let members: BTreeMap<NodeId, NodeInfo> = self.config.bootstrap_members()?;
        tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "initializing new cluster");
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(e),
            )) => {
                tracing::info!(reason = %e, "cluster already initialized");
                Ok(())
            }
            Err(e) => Err(Error::raft("initializing the cluster", e)),
        }
    }

    /// Serves until `shutdown` completes, then shuts down gracefully (see [`shutdown`]): the
    /// client API (with connection and request limits) on `listeners.client`, the Raft transport
    /// on `listeners.peer`, `/metrics` and `/health` on `listeners.metrics`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if a server fails while running.
    pub async fn serve(
        self: Arc<Self>,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let span = tracing::info_span!("node", node_id = self.id);
        let limits = &self.config.limits;
        tracing::info!(
            parent: &span,
            client = %listeners.client.local_addr()?,
            peer = %listeners.peer.local_addr()?,
            metrics = ?listeners.metrics.as_ref().and_then(|l| l.local_addr().ok()),
            engine = self.engine.name(),
            "serving"
        );
        let tls = &self.config.tls;
        if tls.cert_file.is_some() && (tls.peer_cert_file.is_none() || !tls.peer_client_cert_auth) {
            // Once: the operator secured the clients' port and left the members' open.
            tracing::warn!(
                parent: &span,
                "the client port serves TLS but the peer port takes connections without a \
                 trusted certificate (tls.peer_cert_file unset, or peer_client_cert_auth off): \
                 whoever reaches it can append to the Raft log, and pass forwarded requests as \
                 any user once auth is enabled"
            );
        }
        // Whether to ask to join, decided before the peer port serves: a member added beforehand
        // (etcd's MemberAdd) hears from the leader as soon as it does, and would otherwise find
        // itself initialized and never ask to be promoted.
        let joining = !self.config.cluster.join.is_empty() && self.awaits_admission().await;
        let client_stop = CancellationToken::new();
        let peer_stop = CancellationToken::new();
        let mut tasks: JoinSet<(&'static str, Result<()>)> = JoinSet::new();

        let kv = KvServer::new(kv_service::KvService::new(&self))
            .max_decoding_message_size(limits.max_message_bytes)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let cluster = ClusterServer::new(cluster_service::ClusterService::new(self.clone()))
            .max_decoding_message_size(limits.max_message_bytes);
        // etcd's v3 API on the same port: its own Cluster and Maintenance (etcd/).
        let events = self.events.clone();
        let etcd_context =
            etcd::EtcdContext::new(&self).with_revision_source(Arc::new(move || events.revision()));
        let etcd_cluster_service = Arc::new(etcd::cluster::EtcdClusterService::new(
            etcd_context.clone(),
            membership::MembershipAdmin::new(self.clone()),
            etcd::cluster::Schemes::of(self.tls.client().is_some(), self.tls.peer().is_some()),
        ));
        let etcd_cluster = || {
            EtcdClusterServer::from_arc(etcd_cluster_service.clone())
                .max_decoding_message_size(limits.max_message_bytes)
        };
        let etcd_maintenance_service = Arc::new(etcd::maintenance::EtcdMaintenanceService::new(
            etcd_context.clone(),
            read_view::ReadView::new(
                self.engine.clone(),
                self.state_machine.sweeper(),
                &self.raft,
            ),
            membership::MembershipAdmin::new(self.clone()),
            (self.data_dir.clone(), limits.quota_backend_bytes),
            (
                self.state_machine.alarms(),
                self.proposer.clone(),
                self.reads.clone(),
            ),
        ));
        let etcd_maintenance = || {
            EtcdMaintenanceServer::from_arc(etcd_maintenance_service.clone())
                .max_decoding_message_size(limits.max_message_bytes)
        };
        if limits.quota_backend_bytes > 0 {
            let quota = etcd_maintenance_service.clone().watch_quota();
            let stop = client_stop.clone();
            tokio::spawn(
                async move {
                    tokio::select! {
                        () = quota => {}
                        () = stop.cancelled() => {}
                    }
                }
                .instrument(span.clone()),
            );
        }
        let view = read_view::ReadView::new(
            self.engine.clone(),
            self.state_machine.sweeper(),
            &self.raft,
        );
        // Shared with the lock and election services, which run their recipes through it.
        let etcd_kv_service = Arc::new(etcd::kv::EtcdKv::new(
            etcd_context.clone(),
            self.proposer.clone(),
            self.reads.clone(),
            view.clone(),
        ));
        let etcd_kv = || {
            EtcdKvServer::from_arc(etcd_kv_service.clone())
                .max_decoding_message_size(limits.max_message_bytes)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        };
        let etcd_watch = EtcdWatchServer::new(etcd::watch::EtcdWatch::new(
            etcd_context.clone(),
            view.clone(),
            self.events.clone(),
        ))
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
        tokio::spawn(
            compactor::run(
                self.raft.clone(),
                self.proposer.clone(),
                self.events.clone(),
                view.clone(),
                self.config.compaction.parse()?,
            )
            .instrument(span.clone()),
        );
        // In the node's span: the lease service starts the leader's lease clock task.
        let etcd_lease_service = Arc::new(span.in_scope(|| {
            etcd::lease::EtcdLease::new(
                etcd_context.clone(),
                self.raft.clone(),
                self.proposer.clone(),
                view.clone(),
            )
        }));
        let etcd_lease = || {
            EtcdLeaseServer::from_arc(etcd_lease_service.clone())
                .max_decoding_message_size(limits.max_message_bytes)
        };
        // etcd's Lock and Election: its concurrency recipes over the services above. Their tasks
        // (undoing canceled requests, serving Observe streams) are waited for at shutdown.
        let recipe_tasks = tokio_util::task::TaskTracker::new();
        let recipes = etcd::concurrency::Recipes::new(
            etcd_kv_service.clone(),
            etcd_lease_service.clone(),
            view,
            self.events.clone(),
            recipe_tasks.clone(),
        );
        let etcd_auth_service = Arc::new(etcd::auth::EtcdAuth::new(
            etcd_context.clone(),
            self.proposer.clone(),
            self.reads.clone(),
            self.config.auth.bcrypt_cost,
        ));
        let etcd_auth = || {
            EtcdAuthServer::from_arc(etcd_auth_service.clone())
                .max_decoding_message_size(limits.max_message_bytes)
        };
        let etcd_lock = EtcdLockServer::new(etcd::lock::EtcdLock::new(recipes.clone()))
            .max_decoding_message_size(limits.max_message_bytes);
        let etcd_election = EtcdElectionServer::new(etcd::election::EtcdElection::new(
            etcd_context.clone(),
            recipes,
        ))
        .max_decoding_message_size(limits.max_message_bytes);
        let incoming = tls::tls_incoming(
            limits::limited_incoming(listeners.client, limits.max_connections),
            self.tls.client(),
            "client API",
        );
        let stop = client_stop.clone();
        let max_message_bytes = limits.max_message_bytes;
        // Nagle is disabled per accepted connection (limits.rs, peer_incoming): the builder's
        // tcp_nodelay only applies to listeners tonic binds itself.
        let mut grpc = tonic::service::RoutesBuilder::default();
        grpc.add_service(kv)
            .add_service(cluster)
            .add_service(etcd_cluster())
            .add_service(etcd_maintenance())
            .add_service(etcd_kv())
            .add_service(etcd_watch)
            .add_service(etcd_lease())
            .add_service(etcd_auth())
            .add_service(etcd_lock)
            .add_service(etcd_election);
        // etcd's client port answers HTTP beside gRPC (/metrics, /health, /version): a
        // connection that does not open with HTTP/2's preface is served as HTTP/1.1.
        let routes = tonic::service::Routes::from(
            grpc.routes()
                .into_axum_router()
                .merge(http::client_port_routes(self.clone()))
                .fallback(http::client_port_fallback),
        );
        let client_server = tonic::transport::Server::builder()
            .accept_http1(true)
            .layer(tower::util::MapResponseLayer::new(move |response| {
                limits::name_message_limit(response, max_message_bytes)
            }))
            .layer(auth::CertUsers::new(
                self.auth.clone(),
                self.config.tls.client_cert_auth,
            ))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async move { stop.cancelled().await });
        tasks.spawn(
            async move {
                let r = client_server.await;
                (
                    "client API",
                    r.map_err(|e| Error::unavailable_by("client API server", e)),
                )
            }
            .instrument(span.clone()),
        );

        let raft = RaftServer::new(raft_service::RaftService::new(&self, peer_stop.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let stop = peer_stop.clone();
        // The etcd services followers forward to the leader, on the port only members reach
        // (etcd/forward.rs), each answer stamped with the applied index the follower waits for.
        let peer_server = peer_server(self.config.peer_liveness())
            .layer(etcd::forward::StampApplied::new(self.events.clone()))
            .add_service(raft)
            .add_service(AdmissionServer::new(admission::AdmissionService::new(
                etcd_context.clone(),
                membership::MembershipAdmin::new(self.clone()),
            )))
            .add_service(MemberAlarmsServer::from_arc(
                etcd_maintenance_service.clone(),
            ))
            .add_service(etcd_kv())
            .add_service(etcd_lease())
            .add_service(etcd_cluster())
            .add_service(etcd_maintenance())
            .add_service(etcd_auth())
            .serve_with_incoming_shutdown(
                tls::tls_incoming(
                    peer_incoming(listeners.peer),
                    self.tls.peer(),
                    "raft transport",
                ),
                async move { stop.cancelled().await },
            );
        tasks.spawn(
            async move {
                let r = peer_server.await;
                (
                    "raft transport",
                    r.map_err(|e| Error::unavailable_by("raft server", e)),
                )
            }
            .instrument(span.clone()),
        );

        if let Some(listener) = listeners.metrics {
            let stop = peer_stop.clone();
            let node = self.clone();
            let tls = self.tls.metrics();
            tasks.spawn(
                async move {
                    let r = http::serve_http(
                        node,
                        listener,
                        tls,
                        async move { stop.cancelled().await },
                    )
                    .await
                    .map_err(|e| Error::unavailable_by("metrics server", e));
                    ("metrics", r)
                }
                .instrument(span.clone()),
            );
        }
        if self.lease_hold.is_held() {
            let node = self.clone();
            tasks.spawn(
                async move {
                    node.lease_hold.release(&node.raft).await;
                    ("lease hold", Ok(()))
                }
                .instrument(span.clone()),
            );
        }
        if joining {
            let node = self.clone();
            tasks.spawn(
                async move {
                    join_cluster(node).await;
                    ("join", Ok(()))
                }
                .instrument(span.clone()),
            );
        }
        let follow =
            tasks.spawn(http::follow_raft(self.clone()).map(|()| ("raft metrics", Ok(()))));
        // Ends with the peer listener: peers dial with rotated certificates until then.
        tokio::spawn(
            self.tls
                .clone()
                .watch(self.config.tls.clone(), peer_stop.clone())
                .instrument(span.clone()),
        );

        // Run until asked to stop, or until a server fails (the join task may end normally).
        let mut failure = None;
        let mut client_done = false;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(done) = tasks.join_next() => {
                    let (what, result) = done.unwrap_or((
                        "task",
                        Err(Error::unavailable("server task panicked")),
                    ));
                    // These two end by design.
                    if matches!(what, "join" | "lease hold") && result.is_ok() {
                        continue;
                    }
                    client_done = what == "client API";
                    tracing::error!(parent: &span, server = what, error = %result.as_ref().err().map(Error::report).unwrap_or_default(), "server stopped unexpectedly");
                    failure = Some(result.err().unwrap_or_else(|| Error::unavailable(format!("{what} stopped"))));
                    break;
                }
            }
        }

        let budget = Duration::from_millis(self.config.shutdown_timeout_ms);
        let deadline = tokio::time::Instant::now() + budget;
        shutdown::prepare(&self, deadline)
            .instrument(span.clone())
            .await;
        // Stop accepting client connections and wait for in-flight requests (bounded).
        client_stop.cancel();
        let drained = tokio::time::timeout_at(deadline, async {
            if client_done {
                return;
            }
            while let Some(done) = tasks.join_next().await {
                if let Ok(("client API", _)) = done {
                    return;
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(parent: &span, in_flight = self.limiter.in_flight(), "drain timed out; closing remaining requests");
        }
        // Requests the drain ended may have left keys to delete (a waiting lock or campaign):
        // let that happen while Raft still runs.
        recipe_tasks.close();
        if tokio::time::timeout_at(deadline, recipe_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(parent: &span, left = recipe_tasks.len(), "lock and election tasks still running at shutdown");
        }
        peer_stop.cancel();
        follow.abort();
        tracing::info!(parent: &span, "client API drained; shutting raft down");
        if let Err(e) = self.raft.shutdown().await {
            tracing::error!(parent: &span, error = %e, "raft shutdown failed");
        }
        self.snapshots.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        let engine = self.engine.clone();
        match tokio::task::spawn_blocking(move || engine.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(parent: &span, error = %e, "state machine sync failed"),
            Err(e) => tracing::error!(parent: &span, error = %e, "state machine sync panicked"),
        }
        tracing::info!(parent: &span, "node stopped");
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The current leader's id and advertised address, if known.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())?;
        Some((id, addr))
    }

    /// What this node knows of its quorum: whether it leads and has been acknowledged by a quorum
    /// of voters within the election timeout (so it can serve writes and linearizable reads).
    pub fn quorum(&self) -> QuorumState {
        QuorumState::of(&self.raft, self.config.raft.election_timeout_max_ms)
    }

    /// How this node dials other members' peer ports (Raft, forwarded etcd requests).
    pub fn peer_dial(&self) -> rskv_client::transport::Dial {
        peer_dial(&self.config, &self.tls)
    }

    /// The index the local state machine has applied.
    pub fn applied_index(&self) -> u64 {
        crate::raft::applied_index(&self.raft)
    }
}

/// A leader's view of its quorum, for status, `/health` and "no quorum" errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumState {
    /// This node.
    pub id: NodeId,
    /// Whether this node leads.
    pub leading: bool,
    /// Its current term.
    pub term: u64,
    /// Voters in the membership.
    pub voters: usize,
    /// On the leader: milliseconds since a quorum of voters last acknowledged it (`None`:
    /// never in this term).
    pub ack_ms: Option<u64>,
    /// How recent that acknowledgement must be (the election timeout maximum, openraft's
    /// leader lease).
    pub window_ms: u64,
    /// Leading with a quorum acknowledgement inside the window.
    pub ok: bool,
}

impl QuorumState {
    /// The state `raft` reports, judged against a window of `window_ms`.
    pub fn of(raft: &Raft, window_ms: u64) -> QuorumState {
        let m = raft.metrics().borrow_watched().clone();
        let leading = m.state == openraft::ServerState::Leader;
        let ack_ms = if leading {
            m.last_quorum_acked
                .as_ref()
                .map(|at| openraft::Instant::elapsed(&**at).as_millis() as u64)
        } else {
            None
        };
        let voters = m.membership_config.membership().voter_ids().count();
        // A lone voter is its own quorum: no acknowledgement is ever needed (or recorded).
        let alone = voters <= 1;
        QuorumState {
            id: m.id,
            leading,
            term: m.current_term,
            voters,
            ack_ms,
            window_ms,
            ok: leading && (alone || ack_ms.is_some_and(|ms| ms <= window_ms)),
        }
    }

    /// The error for a request this leader refused for want of a quorum; `refused` says what
    /// was not done.
    pub fn no_quorum(&self, refused: &str) -> Error {
        Error::NoQuorum(format!("{}; {refused}", self.describe()))
    }

    /// Says, for people, what this node knows of its quorum.
    pub fn describe(&self) -> String {
        let id = self.id;
        let majority = self.voters / 2 + 1;
        match self.ack_ms {
            _ if !self.leading => format!("node {id} does not lead"),
            Some(ms) => format!(
                "node {id} leads term {} but no majority ({majority} of {} voters) has \
                 acknowledged it for {ms} ms (election timeout {} ms)",
                self.term, self.voters, self.window_ms
            ),
            None => format!(
                "node {id} leads term {} but no majority ({majority} of {} voters) has \
                 acknowledged it yet",
                self.term, self.voters
            ),
        }
    }
}

/// Remotely reset streams a peer connection may have waiting to be accepted before h2 takes it for
/// an attack and closes the connection with a protocol error (h2's default is 20).
///
/// openraft opens a stream per heartbeat and cancels it when no answer comes within the heartbeat
/// interval; votes and append streams are cancelled the same way. A peer connection that stalls
/// and then resumes delivers all the requests cancelled in the meantime at once: after almost
/// every heal of a partition that was more than 20, and h2 closed the connection that had just
/// recovered. Keep-alive now drops a stalled connection after about a heartbeat plus an election
/// timeout ([`PeerLiveness`]); 1,000 is a hundred seconds of heartbeats at 100 ms. The limit
/// guards client-facing servers against "rapid reset" floods; a peer can send anything anyway.
const PEER_RESET_STREAMS: usize = 1000;

/// The gRPC server of the Raft transport: dead peer connections are dropped as the transport's
/// own are ([`PeerLiveness`]), and cancelled Raft RPCs do not trip h2's reset limit
/// ([`PEER_RESET_STREAMS`]).
pub(crate) fn peer_server(liveness: PeerLiveness) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(liveness.ping_after))
        .http2_keepalive_timeout(Some(liveness.ping_timeout))
        .http2_max_pending_accept_reset_streams(Some(PEER_RESET_STREAMS))
}

/// Accepted peer connections with Nagle's algorithm off: `tcp_nodelay` on the builder only applies
/// to listeners tonic binds itself, and Nagle plus delayed ACKs would hold small Raft replies for
/// ~40 ms.
fn peer_incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    static NAGLE: LogThrottle = LogThrottle::every_interval();
    TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|stream| {
            if let Err(e) = stream.set_nodelay(true) {
                rskv_storage::warn_throttled!(NAGLE, 0, error = %e, "cannot disable Nagle on a peer connection");
            }
        })
    })
}

/// How a node with `config` dials other members' peer ports: from `peer_source_ip`, in peer TLS.
fn peer_dial(config: &Config, tls: &tls::NodeTls) -> rskv_client::transport::Dial {
    rskv_client::transport::Dial {
        source_ip: config.peer_source_ip,
        tls: tls.peer_dialer(),
    }
}

/// Asks the cluster named by `cluster.join` to admit this node over the peer port
/// ([`admission`]): as a learner, then as a voter once it has caught up (unless it was added
/// as a learner to be promoted only by request); retries (with backoff) until it succeeds or the
/// node stops. The join addresses are client addresses: the leader's
/// `Status` there (which needs no user) names the members' peer addresses.
async fn join_cluster(node: Arc<Node>) {
    static JOIN_FAILED: LogThrottle = LogThrottle::every_interval();
    static PROMOTE_FAILED: LogThrottle = LogThrottle::every_interval();
    let info = match node.config.node_info() {
        Ok(info) => info,
        Err(e) => {
            tracing::error!(error = %e, "cannot join: invalid own address");
            return;
        }
    };
    let options = rskv_client::ClientOptions {
        tls: node.tls.client_dialer(),
        ..rskv_client::ClientOptions::default()
    };
    let client = match rskv_client::Client::with_options(node.config.cluster.join.clone(), options)
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot join: invalid join endpoints");
            return;
        }
    };
    let mut backoff = Duration::from_millis(200);
    loop {
        match admit(&node, &client, &info, false).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::InvalidArgument => {
                tracing::error!(
                    why = s.message(),
                    "the cluster refused to add this node; not retrying"
                );
                return;
            }
            Err(s) => {
                rskv_storage::warn_throttled!(
                    JOIN_FAILED,
                    0,
                    error = s.message(),
                    "join: adding as learner failed; retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::info!("joined as learner; catching up before promotion");
    loop {
        match admit(&node, &client, &info, true).await {
            Ok(answer) if answer.learner_until_promoted => {
                tracing::info!(
                    "added as a learner to be promoted by request (etcd's member add --learner): staying a learner until promoted"
                );
                return;
            }
            Ok(_) => {
                tracing::info!("promoted to voter");
                return;
            }
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                tracing::debug!(reason = s.message(), "still catching up");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(s) => {
                rskv_storage::warn_throttled!(
                    PROMOTE_FAILED,
                    0,
                    error = s.message(),
                    "join: promotion failed; retrying"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// How long one admission may take (a membership change commits in well under that).
const ADMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the members `client` finds to admit `node` (as a voter when `promote`), the leader
/// first, over their peer ports.
///
/// # Errors
/// The refusal (INVALID_ARGUMENT: never admissible; FAILED_PRECONDITION: not caught up yet), or
/// the last member's failure when none answered.
async fn admit(
    node: &Node,
    client: &rskv_client::Client,
    info: &crate::raft::NodeInfo,
    promote: bool,
) -> std::result::Result<rskv_proto::raft::AdmitResponse, tonic::Status> {
    use rskv_proto::raft::admission_client::AdmissionClient;
    let status = client
        .leader_status()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("no leader found to ask: {e}")))?;
    let mut members: Vec<_> = status.members.iter().filter(|m| m.id != node.id).collect();
    members.sort_by_key(|m| Some(m.id) != status.leader_id);
    let mut failed = tonic::Status::unavailable("the cluster has no other member to ask");
    for member in members {
        let channel = node
            .config
            .peer_liveness()
            .channel(&member.peer_addr, node.peer_dial())
            .map_err(tonic::Status::invalid_argument)?;
        let mut request = tonic::Request::new(rskv_proto::raft::AdmitRequest {
            id: node.id,
            addr: info.addr.clone(),
            peer_addr: info.peer_addr.clone(),
            promote,
        });
        request.set_timeout(ADMIT_TIMEOUT);
        match AdmissionClient::new(channel).admit(request).await {
            Ok(answer) => return Ok(answer.into_inner()),
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                ) =>
            {
                return Err(s)
            }
            Err(s) => {
                failed = tonic::Status::new(
                    s.code(),
                    format!(
                        "member {} at {}: {}",
                        member.id,
                        member.peer_addr,
                        s.message()
                    ),
                );
            }
        }
    }
    Err(failed)
}

/// Maps a failed Raft proposal (client write or membership change) to the node error: NOT_LEADER
/// with the leader's address, NO_QUORUM when this leader refused it for want of a quorum, "not
/// admitted" when openraft refused before proposing (another membership change in progress),
/// invalid argument for a rejected membership, and UNAVAILABLE — outcome unknown — for anything
/// else (an entry discarded by a leader change may still have been committed elsewhere).
pub(crate) fn write_error(
    raft: &Raft,
    quorum_window_ms: u64,
    e: openraft::error::RaftError<
        crate::raft::TypeConfig,
        openraft::error::ClientWriteError<crate::raft::TypeConfig>,
    >,
) -> Error {
    use openraft::error::ChangeMembershipError;
    use openraft::error::ClientWriteError;
    use openraft::error::ForwardReason;
    use openraft::error::RaftError;
    match e {
        // Refused before it was appended: its lease on a quorum lapsed.
        RaftError::APIError(ClientWriteError::ForwardToLeader(f))
            if f.reason == ForwardReason::LeaseExpired =>
        {
            QuorumState::of(raft, quorum_window_ms).no_quorum("the write was not proposed")
        }
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => f.into(),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => match c {
            // Refused before anything was proposed: safe for the client to retry.
            ChangeMembershipError::InProgress(p) => {
                Error::NotAdmitted(format!("another membership change is in progress: {p}"))
            }
            other => Error::InvalidArgument(other.to_string()),
        },
        other => Error::unavailable_by("proposing", other),
    }
}

/// Runs one client request: admits it under `limiter` (when given), records its method, status
/// code and latency, and converts the node error into a gRPC status.
pub(crate) async fn handle<T>(
    method: &'static str,
    limiter: Option<&limits::RequestLimiter>,
    request: impl Future<Output = Result<T>>,
) -> std::result::Result<tonic::Response<T>, tonic::Status> {
    handle_many(method, limiter, 1, request).await
}

/// [`handle`] for an RPC carrying `count` requests, which take `count` in-flight slots.
pub(crate) async fn handle_many<T>(
    method: &'static str,
    limiter: Option<&limits::RequestLimiter>,
    count: usize,
    request: impl Future<Output = Result<T>>,
) -> std::result::Result<tonic::Response<T>, tonic::Status> {
    let started = std::time::Instant::now();
    let permit = match limiter.map(|l| l.admit_many(count)).transpose() {
        Ok(permit) => permit,
        Err(e) => {
            let status = tonic::Status::from(e);
            crate::metrics::request_done(method, status.code(), started.elapsed());
            return Err(status);
        }
    };
    let result = request.await.map_err(tonic::Status::from);
    drop(permit);
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    crate::metrics::request_done(method, code, started.elapsed());
    result.map(tonic::Response::new)
}
