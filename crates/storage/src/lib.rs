//! # rskv-storage: what a node keeps, and the vocabulary it keeps it in
//!
//! The bottom layer of a node. The Raft log ([`log_store`]) and the state machine
//! ([`state_machine`]) that committed entries are applied to, the snapshot file format both state
//! machines share ([`snapshot`]) and the reader of etcd's own backups ([`etcd_backup`]), the replicated command itself ([`types`]), the apply events the
//! state machine publishes ([`events`]), and the one module where openraft's types meet bytes
//! ([`format`]): everything stored is rskv's own versioned protobuf schema.
//!
//! The log and the state machine are separate on purpose (as in raft-rs and TiKV): the log is the
//! durable record of what was agreed, the state machine is a rebuildable view of it. The state
//! machine's engine is chosen in config: [`memory::MemoryEngine`] or [`rocks::RocksEngine`], both
//! behind the [`state_machine::KvEngine`] trait and tested by one shared suite.
//!
//! This crate is a separate crate so the compiler keeps the layering: it knows nothing of the
//! Raft transport, the gRPC services or the node (`rskv-server` depends on it, never the reverse),
//! and nothing here depends on a client.

// Library code never unwraps: a panic on a storage path is a bug report, not an error message.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod error;
pub mod etcd_backup;
pub mod events;
pub mod format;
pub mod io_thread;
pub mod log_store;
pub mod log_throttle;
pub mod metrics;
pub mod mvcc;
pub mod snapshot;
pub mod snapshot_inbox;
pub mod state_machine;
pub mod types;

pub use log_store::LogStore;
pub use snapshot::SnapshotData;
pub use snapshot::SnapshotFile;
pub use snapshot_inbox::SnapshotInbox;
pub use state_machine::memory;
pub use state_machine::rocks;
pub use state_machine::AppliedState;
pub use state_machine::KvEngine;
pub use state_machine::SnapshotTrigger;
pub use state_machine::StateMachine;

/// openraft's own storage conformance suite, run against the log store with each engine.
#[cfg(test)]
mod openraft_suite {
    use std::sync::Arc;

    use openraft::testing::log::StoreBuilder;
    use openraft::testing::log::Suite;
    use openraft::type_config::TypeConfigExt;
    use openraft::StorageError;

    use super::*;
    use crate::types::TypeConfig;

    struct Builder {
        rocks_engine: bool,
    }

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
            let fail = |e: std::io::Error| StorageError::read(TypeConfig::err_from_error(&e));
            let dir = tempfile::tempdir().map_err(fail)?;
            let log_store = LogStore::open(&dir.path().join("log")).map_err(fail)?;
            let engine: Arc<dyn KvEngine> = if self.rocks_engine {
                Arc::new(rocks::RocksEngine::open(&dir.path().join("sm")).map_err(fail)?)
            } else {
                Arc::new(memory::MemoryEngine::new())
            };
            let events = Arc::new(crate::events::EventBus::new(16));
            let trigger = state_machine::SnapshotTrigger::new(0);
            let sm = StateMachine::open(engine, &dir.path().join("snapshots"), events, trigger)
                .await
                .map_err(fail)?;
            Ok((dir, log_store, sm))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_engine_should_pass_openraft_suite() {
        Suite::test_all(Builder {
            rocks_engine: false,
        })
        .await
        .expect("openraft storage suite");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rocks_engine_should_pass_openraft_suite() {
        Suite::test_all(Builder { rocks_engine: true })
            .await
            .expect("openraft storage suite");
    }
}
