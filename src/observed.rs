//! What one reconcile observed of a job: its runtime, its pods, its other children as the watch
//! caches hold them, what else it read, and what the operator remembers of the job. Plain data:
//! the shell's `dereference` step fills it, `lifecycle` decides from it and `build` builds from
//! it, so neither needs a client.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, ResourceQuota, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::resolve::Runtime;

/// See the module documentation.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The runtime the job runs on.
    pub runtime: Runtime,
    /// The runtime was fetched just now, not read from the job's snapshot: it is frozen first.
    pub fresh: bool,
    /// The job's pods: those it controls.
    pub pods: Vec<Arc<Pod>>,
    /// Pods that carry the job's labels but are not its own (someone else's, or left from an
    /// earlier job of the same name): never counted or deleted.
    pub foreign: Vec<Arc<Pod>>,
    /// Pods an earlier reconcile created that the pod watch has not shown yet (the Kubernetes
    /// controllers' "expectations"): not to be created again.
    pub awaited: BTreeSet<String>,
    /// Whether the SSH Secret exists (read only for a job that is neither finished nor
    /// suspended).
    pub secret: bool,
    /// The hostfile ConfigMap as the watch last saw it.
    pub hostfile: Option<Arc<ConfigMap>>,
    /// The headless Service as the watch last saw it.
    pub service: Option<Arc<Service>>,
    /// The tail of the log of the current attempt's failed launcher or initializer:
    /// `(pod, log)`. Matched (the launcher's) or quoted by its last line (an initializer's) in
    /// the failure message, never logged.
    pub failed_log: Option<(String, String)>,
    /// The native gang PodGroup's `PodGroupScheduled` condition (kube-scheduler writes it), read
    /// while a member is unbound.
    pub gang: Option<Condition>,
    /// The namespace's ResourceQuotas, read before the job's first pods (of an attempt).
    pub quotas: Option<Vec<ResourceQuota>>,
    /// How long a status that differs from the job's in pod counts alone must wait before it is
    /// written.
    pub status_hold: StatusHold,
    /// The volume claims the job's pods wait for (the scheduler holds them for a claim), as read:
    /// `None` for one that does not exist.
    pub claims: BTreeMap<String, Option<PersistentVolumeClaim>>,
    /// The nodes of the job's pods that are not Ready (the node controller no longer hears
    /// their kubelet, or it reports them not ready), with why in the node's own words.
    pub lost_nodes: BTreeMap<String, String>,
    /// This run of the operator already made sure the finished job's Secret is gone.
    pub key_retired: bool,
}

/// How long a status that differs from the job's in pod counts alone must wait before it is
/// written; `None`: it may be written now. Counts that cross a line someone waits on (see
/// `lifecycle::Decision::milestone`) wait the least.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusHold {
    /// For counts that cross such a line.
    pub milestone: Option<Duration>,
    /// For the counts in between, which only people read: longer while many jobs' counts wait.
    pub counts: Option<Duration>,
}

impl StatusHold {
    /// The wait for a change that is a milestone or not.
    pub fn wait(&self, milestone: bool) -> Option<Duration> {
        if milestone { self.milestone } else { self.counts }
    }
}
