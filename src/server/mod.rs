//! The node: wires config → storage → network → openraft → gRPC services, and runs them until a
//! shutdown signal.
//!
//! [`Node::start`] opens the storage, creates the Raft instance and bootstraps a brand-new cluster
//! from `cluster.initial_members`. [`Node::serve`] runs the gRPC server (client API and Raft
//! transport on one port) until the `shutdown` future completes, then stops accepting requests,
//! lets in-flight ones finish and shuts openraft down. Tests call both with a pre-bound loopback
//! listener on port 0 and a oneshot as the shutdown signal; the binary passes Ctrl-C/SIGTERM.

pub mod cluster_service;
pub mod kv_service;
pub mod raft_service;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::BasicNode;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::Instrument;

use crate::config::Config;
use crate::config::Engine;
use crate::error::Error;
use crate::error::Result;
use crate::pb::kv::cluster_server::ClusterServer;
use crate::pb::kv::kv_server::KvServer;
use crate::pb::raft::raft_server::RaftServer;
use crate::raft::network::NetworkFactory;
use crate::raft::NodeId;
use crate::raft::Raft;
use crate::storage::memory::MemoryEngine;
use crate::storage::rocks::RocksEngine;
use crate::storage::KvEngine;
use crate::storage::LogStore;
use crate::storage::StateMachine;

/// Largest gRPC message accepted or sent (bounded so a bad client cannot exhaust memory; large
/// enough for a max-size value plus framing, and for Raft batches).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A running Raft member and the handles its services share.
pub struct Node {
    /// This node's id.
    pub id: NodeId,
    /// The effective configuration.
    pub config: Arc<Config>,
    /// The openraft handle (proposals, reads barriers, metrics).
    pub raft: Raft,
    /// The state machine's engine, read directly after a linearizable barrier or for stale reads.
    pub engine: Arc<dyn KvEngine>,
    /// Where this node keeps its data.
    pub data_dir: PathBuf,
    /// Where snapshots (current and incoming) are kept.
    pub snapshot_dir: PathBuf,
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
        let span = tracing::info_span!("node", node_id = config.node_id);
        async move {
            let log_dir = data_dir.join("raft_log");
            let snapshot_dir = data_dir.join("snapshots");
            std::fs::create_dir_all(&log_dir)?;
            std::fs::create_dir_all(&snapshot_dir)?;
            remove_incoming_snapshots(&snapshot_dir);
            let log_store = LogStore::open(&log_dir).map_err(|e| {
                Error::Storage(format!("opening raft log in {}: {e}", log_dir.display()))
            })?;
            let engine: Arc<dyn KvEngine> = match config.storage.engine {
                Engine::Memory => Arc::new(MemoryEngine::new()),
                Engine::Rocksdb => {
                    let dir = data_dir.join("state_machine");
                    Arc::new(RocksEngine::open(&dir).map_err(|e| {
                        Error::Storage(format!("opening state machine in {}: {e}", dir.display()))
                    })?)
                }
            };
            let state_machine = StateMachine::open(engine.clone(), &snapshot_dir).await?;
            let network = NetworkFactory::new(config.raft.snapshot_chunk_bytes as usize);
            let raft_config = Arc::new(config.openraft_config()?);
            let raft = Raft::new(
                config.node_id,
                raft_config,
                network,
                log_store,
                state_machine,
            )
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
            let node = Arc::new(Node {
                id: config.node_id,
                config: Arc::new(config),
                raft,
                engine,
                data_dir: data_dir.to_path_buf(),
                snapshot_dir,
            });
            node.bootstrap().await?;
            Ok(node)
        }
        .instrument(span)
        .await
    }

    /// Initializes a never-initialized node with the bootstrap membership. Every initial member
    /// does this with the same set; openraft makes the identical initial entries agree.
    async fn bootstrap(&self) -> Result<()> {
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        if initialized {
            tracing::info!("recovered existing raft state");
            return Ok(());
        }
        let members: BTreeMap<NodeId, BasicNode> = self
            .config
            .bootstrap_members()?
            .into_iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect();
        tracing::info!(members = ?members.keys().collect::<Vec<_>>(), "initializing new cluster");
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(e),
            )) => {
                tracing::info!(reason = %e, "cluster already initialized");
                Ok(())
            }
            Err(e) => Err(Error::Raft(e.to_string())),
        }
    }

    /// Serves the gRPC API and Raft transport on `listener` until `shutdown` completes, then
    /// drains in-flight requests and shuts Raft down.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the server fails while running.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let span = tracing::info_span!("node", node_id = self.id);
        let addr = listener.local_addr()?;
        tracing::info!(parent: &span, %addr, engine = self.engine.name(), "serving");
        let kv = kv_service::KvService::new(self.clone());
        let cluster = cluster_service::ClusterService::new(self.clone());
        let raft = raft_service::RaftService::new(self.clone());
        let result = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(
                KvServer::new(kv)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(ClusterServer::new(cluster))
            .add_service(
                RaftServer::new(raft)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .instrument(span.clone())
            .await;
        tracing::info!(parent: &span, "gRPC server stopped; shutting raft down");
        if let Err(e) = self.raft.shutdown().await {
            tracing::error!(parent: &span, error = %e, "raft shutdown failed");
        }
        result.map_err(|e| Error::Unavailable(format!("gRPC server failed: {e}")))
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

    /// The index the local state machine has applied.
    pub fn applied_index(&self) -> u64 {
        self.raft
            .metrics()
            .borrow_watched()
            .last_applied
            .as_ref()
            .map(|l| l.index)
            .unwrap_or(0)
    }
}

/// Removes partial snapshots left by an interrupted transfer.
fn remove_incoming_snapshots(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("incoming-") || name.starts_with("building-") {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %name, error = %e, "cannot remove stale snapshot file");
            }
        }
    }
}
