//! Stand-ins for what a gateway's policy leaves out: no patch server (`[server]` absent or its TLS files
//! unusable: every fetch says why) and no critical processes (nothing to checkpoint).

use async_trait::async_trait;

use super::{BackendError, BackendResult, Checkpointer, FetchOutcome, Fetcher, ProgressFn};
use crate::engine::{CheckpointRef, WindowCtx};

/// A fetcher that cannot work with this policy (no `[server]`, unusable TLS files): every fetch says why.
#[derive(Debug, Clone)]
pub struct FetchNotConfigured(pub String);

#[async_trait]
impl Fetcher for FetchNotConfigured {
    async fn fetch(
        &self,
        _: &WindowCtx,
        _: &crate::rolled_back::RolledBack,
        _: ProgressFn,
    ) -> BackendResult<FetchOutcome> {
        Err(BackendError::new(self.0.clone()))
    }
}

/// The checkpointer of a policy that names no critical process: there is nothing to dump or restore.
#[derive(Debug, Clone, Copy)]
pub struct NoCriticalProcesses;

#[async_trait]
impl Checkpointer for NoCriticalProcesses {
    async fn preflight(&self) -> BackendResult<()> {
        Ok(())
    }
    async fn checkpoint(&self, window: &WindowCtx) -> BackendResult<CheckpointRef> {
        Ok(CheckpointRef { id: format!("none-{}", window.id), processes: Vec::new() })
    }
    async fn restore(&self, _: &CheckpointRef) -> BackendResult<()> {
        Ok(())
    }
    async fn discard(&self, _: &CheckpointRef) -> BackendResult<()> {
        Ok(())
    }
}
