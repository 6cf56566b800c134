//! The job lifecycle: from a job, its plan and what the reconcile observed, decide the status to
//! write and the pods to create and delete. Pure, so ordering, restarts, failure messages,
//! suspension and deadlines are unit-tested without a server. One function per state, tried in
//! order: finished → suspended → deadline → failed (restart or fail) → complete → create; then
//! a job that goes on must still have its key.

mod conditions;
mod diagnose;
mod events;
mod failure;
mod jobs_status;
mod pass;
mod pod_state;
mod scheduling;
mod stall;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{TrainJob, TrainJobStatus};
use crate::names;
use crate::observed::Observed;
use crate::plan::{Plan, PodIndex};
use crate::reasons;
pub use conditions::{failed_status, finished, is_true, now, set_condition};
pub use diagnose::launcher_log as diagnose;
pub use events::{Note, Severity, events, transitions};
use pass::pass;
pub use stall::claims_awaited;

/// Coarse phase, for metrics, logs and the job view.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, schemars::JsonSchema,
)]
pub enum Phase {
    /// Suspended.
    Suspended,
    /// Pods are being created or are not all running yet.
    Starting,
    /// The launcher is running.
    Running,
    /// Restarting the gang.
    Restarting,
    /// Finished successfully.
    Complete,
    /// Failed.
    Failed,
}

impl Phase {
    /// Lower-case name used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Suspended => "suspended",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Restarting => "restarting",
            Phase::Complete => "complete",
            Phase::Failed => "failed",
        }
    }

    /// Whether the job's Secret, hostfile and Service must exist in this phase.
    pub fn needs_children(self) -> bool {
        matches!(self, Phase::Starting | Phase::Running | Phase::Restarting)
    }
}

/// What the reconciler should do.
#[derive(Clone, Debug, Default)]
pub struct Decision {
    /// Status to write (written only when it differs from the current one).
    pub status: TrainJobStatus,
    /// Pods to create: `(index into plan.jobs, pod index)`.
    pub create: Vec<(usize, PodIndex)>,
    /// Names of pods to delete.
    pub delete: Vec<String>,
    /// Why the whole gang restarts, when it does.
    pub restart: Option<String>,
    /// When to look again even if nothing changes (the active deadline).
    pub requeue_after: Option<Duration>,
    /// Phase after this decision.
    pub phase: Option<Phase>,
    /// Whether the status's pod counts cross a line someone waits on, so that a change in them
    /// alone is written soon even in a busy cluster: every pod ready or done (Kueue's
    /// `PodsReady`), or no pod active (Kueue waits for it after suspending a job).
    pub milestone: bool,
}

/// Why a job cannot go on, found while deciding: both mean a failed job, unless the error is a
/// leftover the garbage collector is about to remove.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the SSH Secret {name} was deleted while the job's pods ran; they hold the only copy of its key, so new pods could not reach them: re-create the TrainJob"
    )]
    SecretDeleted { name: String },
    /// A pod the job needs exists and is not the job's.
    #[error(transparent)]
    Owner(#[from] names::OwnerError),
}

impl Error {
    /// The `Failed` reason when the error cannot heal without the user; `None` when it is
    /// transient and worth retrying.
    pub fn permanent(&self) -> Option<&'static str> {
        match self {
            Error::SecretDeleted { .. } => Some(reasons::SECRET_DELETED),
            Error::Owner(e) => e.permanent(),
        }
    }

    /// Stable label for the error metric.
    pub fn label(&self) -> &'static str {
        match self {
            Error::SecretDeleted { .. } => "secret_deleted",
            Error::Owner(e) => e.label(),
        }
    }
}

/// Decides what to do for `job` with `plan`, given what the reconcile observed.
pub fn decide(job: &TrainJob, plan: &Plan, observed: &Observed, now: &Time) -> Result<Decision, Error> {
    let decision = pass(job, plan, observed, now)?;
    // A job that goes on needs its key; one that finishes now does not (it may well be this
    // operator's own half-done finish that deleted it).
    if decision.phase.is_some_and(Phase::needs_children) && key_lost(observed.secret, &observed.pods) {
        return Err(Error::SecretDeleted {
            name: names::ssh_secret(job.metadata.name.as_deref().unwrap_or_default()),
        });
    }
    Ok(decision)
}

/// The phase a job's status and pods show, for readers that did not decide it (the job view):
/// what the last decision said, but for the passing `Restarting`, which reads as `Starting`.
pub fn phase_of(job: &TrainJob, pods: &[Pod]) -> Phase {
    let status = job.status.as_ref();
    let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    if is_true(conditions, reasons::condition::COMPLETE) {
        return Phase::Complete;
    }
    if is_true(conditions, reasons::condition::FAILED) {
        return Phase::Failed;
    }
    if job.spec.suspend.unwrap_or(false) {
        return Phase::Suspended;
    }
    let attempt = status.and_then(|s| s.restarts).unwrap_or(0);
    let launcher_runs = pods.iter().filter_map(pod_state::PodState::new).any(|o| {
        let launcher = o
            .pod
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(names::JOB_ROLE_LABEL));
        o.attempt == Some(attempt)
            && launcher.map(String::as_str) == Some(crate::api::LAUNCHER)
            && o.phase == "Running"
    });
    match launcher_runs {
        true => Phase::Running,
        false => Phase::Starting,
    }
}

/// Whether the job's key is lost: its Secret is gone while some of its pods, which mounted the
/// Secret when they started, still run. A Secret is created before a job's first pod and deleted
/// only once it finishes, so someone else deleted it; a new key would reach new pods (a launcher
/// yet to come, replacements) but never the running ones.
fn key_lost(secret_exists: bool, pods: &[Arc<Pod>]) -> bool {
    !secret_exists && pods.iter().any(|p| running(p))
}

/// Whether `pod` still runs, or may: not finished, and not being deleted.
fn running(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// `job` failed for `reason` (a permanent error outside the lifecycle: a runtime that does not
/// resolve, a job too large, an object someone else owns): `Failed` with `message`, and every
/// pod that still runs stopped. A job that already finished keeps its status.
pub fn stop(job: &TrainJob, pods: &[Arc<Pod>], reason: &str, message: &str, now: &Time) -> Decision {
    let status = if finished(job.status.as_ref()) {
        job.status.clone().unwrap_or_default()
    } else {
        failed_status(job.status.as_ref(), reason, message, now)
    };
    let mut delete: Vec<String> = pods
        .iter()
        .filter(|p| running(p))
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    delete.sort();
    Decision {
        status,
        delete,
        phase: Some(Phase::Failed),
        ..Decision::default()
    }
}

#[cfg(test)]
mod tests;
