//! What the orchestrator tells the outside: the status snapshot, progress, errors, the audit log and notices.

use otpatch_common::audit::AuditEvent;
use std::sync::Arc;

use tracing::{error, info};

use super::{Notice, Orchestrator};
use crate::backend::ProgressFn;
use crate::engine::Event;

impl Orchestrator {
    /// Publishes the status snapshot (only what changed wakes the watchers).
    pub(super) fn publish(&self) {
        let now = self.now();
        let next = self.next_occurrence(now);
        let st = &self.run.state;
        let (active, active_end) = match st.window() {
            Some(w) if st.in_progress() => (w.id.clone(), w.end.as_second()),
            _ => (String::new(), 0),
        };
        let sources: Vec<String> = self.policy.settings.sources.iter().map(|p| p.display().to_string()).collect();
        let gateway = self.policy.settings.gateway.id.clone();
        let booted_slot = self.policy.backends.ab_updater.booted_slot_seen().unwrap_or_default();
        self.out.status.send_if_modified(|s| {
            let mut n = s.clone();
            n.version = env!("CARGO_PKG_VERSION").into();
            n.gateway_id = gateway;
            n.state = st.name().into();
            n.active_window = active;
            n.active_window_end = active_end;
            n.next_window = next.as_ref().map(|o| o.id.clone()).unwrap_or_default();
            n.next_window_start = next.as_ref().map(|o| o.start.as_second()).unwrap_or(0);
            n.policy_sources = sources;
            n.segmentation_active = self.run.segmented;
            n.booted_slot = booted_slot;
            if n != *s {
                *s = n;
                true
            } else {
                false
            }
        });
    }

    pub(super) fn audit_log(&mut self, window: Option<&str>, uid: Option<u32>, event: AuditEvent) {
        let now = self.now();
        let (kind, detail) = event.kind_and_detail();
        if let Err(e) = self.out.audit.append(now, &kind, window, uid, detail) {
            error!(error = %e, kind, "audit log write failed");
        }
    }

    pub(super) fn progress_fn(&self) -> ProgressFn {
        let status = self.out.status.clone();
        Arc::new(move |percent, message| {
            status.send_modify(|s| {
                s.progress_percent = percent;
                s.progress_message = message;
            })
        })
    }

    /// Records what an event says that the state does not keep (errors, verdicts).
    pub(super) fn note_event(&mut self, ev: &Event) {
        let window = self.run.state.window().map(|w| w.id.clone()).unwrap_or_default();
        let error = match ev {
            Event::PreflightFailed { error }
            | Event::SegmentationFailed { error }
            | Event::FetchFailed { error }
            | Event::VerifyFailed { error }
            | Event::CheckpointFailed { error }
            | Event::ApplyFailed { error }
            | Event::RollbackFailed { error }
            | Event::LiftFailed { error } => Some(error.clone()),
            _ => None,
        };
        if let Some(e) = error {
            self.out.status.send_modify(|s| s.last_error = format!("{}: {e}", ev.name()));
        }
        match ev {
            Event::SegmentationApplied => self.run.segmented = self.policy.settings.segmentation.enabled,
            Event::Lifted => {
                self.run.segmented = false;
                self.run.lift_failures = 0;
                let report = self.run.last_lift.lock().ok().and_then(|mut r| r.take());
                if let Some(r) = report {
                    if r.was_active {
                        info!(window = %window, dropped = r.dropped_packets, "segmentation lifted");
                        self.audit_log(
                            Some(&window),
                            None,
                            AuditEvent::SegmentationLifted { dropped_packets: r.dropped_packets },
                        );
                        self.out.status.send_modify(|s| s.segmentation_dropped = r.dropped_packets);
                    }
                }
            }
            Event::LiftFailed { .. } => self.run.lift_failures = self.run.lift_failures.saturating_add(1),
            _ => {}
        }
        let verdict = match ev {
            Event::Healthy => Some(("healthy", String::new())),
            Event::Degraded { reason } => Some(("degraded", reason.clone())),
            Event::HealthFailed { reason } => Some(("failed", reason.clone())),
            _ => None,
        };
        if let Some((verdict, reason)) = verdict {
            info!(window = %window, verdict, reason = %reason, "health verdict");
            let probes = self.policy.backends.health.probes();
            self.audit_log(
                Some(&window),
                None,
                AuditEvent::Verdict { verdict: verdict.to_string(), reason: reason.clone(), probes: probes.clone() },
            );
            let table = serde_json::to_string(&probes).unwrap_or_default();
            let _ = self.out.notices.send(Notice::ProbeResults { window: window.clone(), probes: table });
            let _ = self.out.notices.send(Notice::HealthVerdict { window, verdict: verdict.into(), reason });
        }
    }

    /// Puts what the firewall has in place (backend, ruleset, drops) into the status snapshot: when segmentation
    /// goes up and every few seconds while it is, so status readers never make the loop ask the firewall.
    pub(super) async fn refresh_segmentation_view(&mut self) {
        if !self.run.segmented {
            self.out.status.send_if_modified(|s| !std::mem::take(&mut s.segmentation_ruleset).is_empty());
            return;
        }
        let view = self.policy.backends.firewall.inspect().await;
        self.out.status.send_modify(|s| match view {
            Ok(Some(v)) => {
                s.segmentation_backend = v.backend;
                s.segmentation_dropped = v.dropped_packets;
                s.segmentation_ruleset = v.ruleset;
            }
            Ok(None) => {}
            Err(e) => s.segmentation_ruleset = format!("(cannot read the ruleset: {e})"),
        });
    }

    pub(super) fn set_access_group(&self) {
        if let Ok(mut g) = self.out.access_group.write() {
            *g = self.policy.settings.access.group.clone();
        }
    }
}
