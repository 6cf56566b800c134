//! A pod as the lifecycle sees it: which replicated job, index and restart attempt it belongs to
//! (from its labels, never from its name), and how far it got.

use k8s_openapi::api::core::v1::Pod;

use crate::names::{
    COMPLETION_INDEX_LABEL, JOBSET_JOB_INDEX_LABEL, REPLICATED_JOB_LABEL, RESTART_ATTEMPT_LABEL,
};
use crate::plan::PodIndex;

/// One observed pod of the job.
pub(super) struct PodState<'a> {
    pub pod: &'a Pod,
    pub name: &'a str,
    pub rjob: &'a str,
    pub at: PodIndex,
    pub attempt: Option<i32>,
    pub phase: &'a str,
    pub ready: bool,
    pub deleting: bool,
    /// Bound to a node that is lost: the pod will never finish, nor finish going, by itself.
    pub lost: bool,
    /// A step outside the MPI world (an initializer) that succeeded in an earlier attempt: a
    /// restart keeps it (its data is on the job's volume) instead of running it again.
    pub carried: bool,
}

impl<'a> PodState<'a> {
    /// `None` for a pod without the labels every pod of ours carries.
    pub fn new(pod: &'a Pod) -> Option<Self> {
        let labels = pod.metadata.labels.as_ref()?;
        let number = |key: &str| labels.get(key).and_then(|v| v.parse::<i32>().ok());
        let status = pod.status.as_ref();
        Some(PodState {
            pod,
            name: pod.metadata.name.as_deref()?,
            rjob: labels.get(REPLICATED_JOB_LABEL)?,
            at: PodIndex {
                job_index: number(JOBSET_JOB_INDEX_LABEL)?,
                index: number(COMPLETION_INDEX_LABEL)?,
            },
            attempt: number(RESTART_ATTEMPT_LABEL),
            phase: status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending"),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            lost: false,
            carried: false,
        })
    }

    /// The pod's node, once it is bound to one.
    pub fn node(&self) -> Option<&'a str> {
        self.pod.spec.as_ref()?.node_name.as_deref()
    }

    /// On its way out, and able to get there: deleted, on a node that can confirm it.
    pub fn leaving(&self) -> bool {
        self.deleting && !self.lost
    }

    /// Pending or Running, not on its way out and not lost with its node.
    pub fn active(&self) -> bool {
        !self.deleting && !self.lost && matches!(self.phase, "Pending" | "Running")
    }

    /// Running with every container ready. A finished pod is never ready.
    pub fn running_ready(&self) -> bool {
        self.phase == "Running" && self.ready
    }

    pub fn succeeded(&self) -> bool {
        self.phase == "Succeeded"
    }

    pub fn failed(&self) -> bool {
        self.phase == "Failed"
    }
}
