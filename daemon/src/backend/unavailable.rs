//! What a production build uses for a capability whose real backend is not in this build yet.
//!
//! It never changes the gateway: preflight fails with a message naming the missing capability, so a window
//! ends before segmentation or any change, and lifting (there is nothing to lift) succeeds.

use std::time::Duration;

use async_trait::async_trait;

use super::{
    Applied, BackendError, BackendResult, Checkpointer, FetchOutcome, Fetcher, Firewall, HealthMonitor, LiftReport,
    Patcher, ProgressFn, SegmentationPlan, Verdict, Verifier,
};
use crate::engine::{BundleRef, CheckpointRef, VerifiedBundle, WindowCtx};

#[derive(Debug, Clone, Copy)]
pub struct Unavailable(pub &'static str);

impl Unavailable {
    fn err(&self) -> BackendError {
        BackendError::new(format!("the {} backend is not part of this otpatchd build", self.0))
    }
}

#[async_trait]
impl Firewall for Unavailable {
    async fn apply(&self, _: &SegmentationPlan) -> BackendResult<()> {
        Err(self.err())
    }
    async fn lift(&self) -> BackendResult<LiftReport> {
        Ok(LiftReport::default())
    }
    async fn active(&self) -> BackendResult<bool> {
        Ok(false)
    }
}

#[async_trait]
impl Fetcher for Unavailable {
    async fn fetch(
        &self,
        _: &WindowCtx,
        _: &crate::rolled_back::RolledBack,
        _: ProgressFn,
    ) -> BackendResult<FetchOutcome> {
        Err(self.err())
    }
}

#[async_trait]
impl Verifier for Unavailable {
    async fn verify(&self, _: &BundleRef) -> BackendResult<VerifiedBundle> {
        Err(self.err())
    }
}

#[async_trait]
impl Checkpointer for Unavailable {
    async fn preflight(&self) -> BackendResult<()> {
        Err(self.err())
    }
    async fn checkpoint(&self, _: &WindowCtx) -> BackendResult<CheckpointRef> {
        Err(self.err())
    }
    async fn restore(&self, _: &CheckpointRef) -> BackendResult<()> {
        Err(self.err())
    }
    async fn discard(&self, _: &CheckpointRef) -> BackendResult<()> {
        Ok(())
    }
}

#[async_trait]
impl Patcher for Unavailable {
    async fn apply(&self, _: &str, _: &VerifiedBundle, _: ProgressFn) -> BackendResult<Applied> {
        Err(self.err())
    }
    async fn revert(&self, _: &VerifiedBundle, _: Option<&VerifiedBundle>) -> BackendResult<()> {
        // Nothing of ours can be in place.
        Ok(())
    }
    async fn commit(&self, _: &VerifiedBundle) -> BackendResult<()> {
        Err(self.err())
    }
}

#[async_trait]
impl HealthMonitor for Unavailable {
    async fn baseline(&self) -> BackendResult<()> {
        Err(self.err())
    }
    async fn observe(&self, _: Duration) -> Verdict {
        Verdict::Failed(self.err().0)
    }
}

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
