//! The desired state: every object a decision needs, as plain values, built from the job, its
//! plan, what the reconcile observed and the decision (the pipeline's build step). Needs no
//! client: `apply` writes what it is given, in its order. Two halves: [`Objects`] (the children to create or apply, built from the plan) and
//! [`Updates`] (the status, the SSH Secret's retirement and the pods to delete, which a job that
//! could not even be planned still needs).
//!
//! The builders: `pods` (pods and the headless Service), `claims` (the runtime's volume claims), `hostfile`, `gang` (native Workload and
//! PodGroup, the scheduler plugins' PodGroups), `netpol`, `snapshot` (the frozen runtime); the
//! SSH Secret comes from a key pair the shell generated (`ssh`); `reporting` points the pods at
//! the status server.

pub mod claims;
pub mod gang;
pub mod hostfile;
pub mod netpol;
pub mod pods;
pub mod reporting;
pub mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::DynamicObject;

use crate::api::TrainJobStatus;
use crate::api::{NODE, TrainJob};
use crate::lifecycle::{self, Decision, Phase};
use crate::names;
use crate::observed::Observed;
use crate::plan::Plan;
use crate::ssh::{KeyPair, SshError};
use gang::{Gang, Plugin};

/// Why an object could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("encoding the runtime snapshot: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    Ssh(#[from] SshError),
}

impl Error {
    /// Stable label for the error metric.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Encode(_) => "encode_snapshot",
            Error::Ssh(_) => "ssh_keygen",
        }
    }
}

/// The children to create or apply. Everything is in place before the first pod.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// The frozen runtime, for a runtime fetched just now.
    pub snapshot: Option<ConfigMap>,
    /// The SSH Secret, for a job that needs one and has none.
    pub secret: Option<Secret>,
    /// The hostfile, where the watch cache shows none or one that differs from what it should be.
    pub hostfile: Option<Write<ConfigMap>>,
    /// The headless Service, likewise.
    pub service: Option<Write<Service>>,
    /// The job's NetworkPolicy, before its first pods.
    pub network_policy: Option<NetworkPolicy>,
    /// The runtime's volume claims, before the job's first pods (one that exists is kept).
    pub claims: Vec<PersistentVolumeClaim>,
    /// The native gang's Workload and PodGroup, before their first member.
    pub gang: Option<Gang>,
    /// A scheduler plugin's PodGroup, before its first member.
    pub plugin_group: Option<(Plugin, DynamicObject)>,
    /// Pods to create, in order.
    pub pods: Vec<Pod>,
}

/// How a child is written.
#[derive(Clone, Debug)]
pub enum Write<K> {
    /// The watch cache shows none: created, one request cheaper than an apply, and an object of
    /// the name that someone else made just now is refused instead of taken over.
    Create(K),
    /// The watch cache shows one that differs: server-side applied back to what it should be.
    Apply(K),
}

impl<K> Write<K> {
    /// A write of `object`: an apply when the cache shows the object, else a create.
    fn of(object: K, cached: bool) -> Write<K> {
        match cached {
            true => Write::Apply(object),
            false => Write::Create(object),
        }
    }

    /// The object written.
    pub fn object(&self) -> &K {
        match self {
            Write::Create(o) | Write::Apply(o) => o,
        }
    }
}

/// The other writes of a decision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Updates {
    /// The status to write now: it changed, and not in pod counts alone within the hold.
    pub status: Option<TrainJobStatus>,
    /// How long a status that changed in pod counts alone was held back.
    pub held: Option<Duration>,
    /// What becomes of a finished job's SSH Secret.
    pub key: Key,
    /// The pods to delete.
    pub delete: Delete,
}

/// What becomes of a job's SSH Secret.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Key {
    /// Nothing: the job runs, the Secret is kept for debugging, or it was retired already.
    #[default]
    Keep,
    /// It went long ago: only remembered as gone, so it is never read again.
    Forget,
    /// Delete it, after the status that finishes the job is written: in that order, a delete
    /// that fails leaves a finished job with a key for a while, never a running job without one.
    Delete,
}

/// Pods to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delete {
    /// These pods, each only as the very object seen: pods of the next restart attempt get the
    /// same names, and a cache behind the API server must not take one for its predecessor.
    Each(Vec<PodDelete>),
    /// Exactly the job's live workers of one attempt: one collection delete, selected by these
    /// labels and fields, instead of one request each.
    Workers { labels: String, fields: String },
}

/// One pod to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDelete {
    pub name: String,
    /// Deleted only if it is still this object.
    pub uid: Option<String>,
    /// At once, without a grace period: the pod is on a lost node, whose kubelet would never
    /// confirm a graceful delete, and its name is needed for the next attempt's pod.
    pub force: bool,
}

impl Default for Delete {
    fn default() -> Self {
        Delete::Each(Vec::new())
    }
}

/// How long after a job finished a reconcile still makes sure its key is gone: a finishing
/// reconcile whose delete failed left it to the next one. Jobs that finished long ago are left
/// alone, so a restarted operator does not read thousands of Secrets that are gone.
const KEY_RETIREMENT: Duration = Duration::from_secs(3600);

/// Whether the job needs a new key pair: it goes on, and has no Secret.
pub fn needs_key(decision: &Decision, observed: &Observed) -> bool {
    decision.phase.is_some_and(Phase::needs_children) && !observed.secret
}

/// Whether `status` finishes a job that has not finished yet.
pub fn finishing(job: &TrainJob, status: &TrainJobStatus) -> bool {
    !lifecycle::finished(job.status.as_ref()) && lifecycle::finished(Some(status))
}

/// The children `decision` needs. `keys`: the new key pair when [`needs_key`] said so.
pub fn objects(
    job: &TrainJob,
    plan: &Plan,
    observed: &Observed,
    decision: &Decision,
    keys: Option<&KeyPair>,
) -> Result<Objects, Error> {
    let children = decision.phase.is_some_and(Phase::needs_children);
    let first_pods = !decision.create.is_empty() && observed.pods.is_empty();
    let snapshot = match observed.fresh {
        true => Some(snapshot::configmap(job, &observed.runtime)?),
        false => None,
    };
    let secret = match keys.filter(|_| needs_key(decision, observed)) {
        Some(keys) => Some(keys.secret(job)?),
        None => None,
    };
    let hostfile = children
        .then(|| hostfile::configmap(job, plan))
        .filter(|cm| {
            observed
                .hostfile
                .as_ref()
                .is_none_or(|cached| cached.data != cm.data)
        })
        .map(|cm| Write::of(cm, observed.hostfile.is_some()));
    let service = children
        .then(|| pods::service(job, plan))
        .filter(|svc| {
            observed
                .service
                .as_ref()
                .is_none_or(|cached| !service_matches(cached, svc))
        })
        .map(|svc| Write::of(svc, observed.service.is_some()));
    let network_policy =
        (plan.cluster.network_policies && first_pods).then(|| netpol::network_policy(job, plan));
    let claims = match first_pods {
        true => claims::claims(job, plan),
        false => Vec::new(),
    };
    let attempt = decision.status.restarts.unwrap_or(0);
    let members = decision
        .create
        .iter()
        .any(|(i, _)| plan.gang_member(plan.jobs[*i].role));
    let gang = members.then(|| gang::gang(job, plan)).flatten();
    // The plugin's PodGroup sums what its members request, so it needs them all built.
    let plugin_group = match members && gang::plugin_members(plan).is_some() {
        true => {
            let all = pods::of_jobs(job, plan, attempt, |rjob| plan.gang_member(rjob.role));
            gang::plugin_pod_group(job, plan, &all)
        }
        false => None,
    };
    let pods = decision
        .create
        .iter()
        .map(|(i, at)| pods::pod(job, plan, &plan.jobs[*i], *at, attempt))
        .collect();
    Ok(Objects {
        snapshot,
        secret,
        hostfile,
        service,
        network_policy,
        claims,
        gang,
        plugin_group,
        pods,
    })
}

/// The status, key and deletions of `decision`. `keep_ssh_secrets`: the operator keeps a
/// finished job's Secret (for debugging).
pub fn updates(
    job: &TrainJob,
    observed: &Observed,
    decision: &Decision,
    keep_ssh_secrets: bool,
    now: &Time,
) -> Updates {
    let new = &decision.status;
    let (mut status, mut held) = (None, None);
    if job.status.as_ref() != Some(new) {
        match observed.status_hold.wait(decision.milestone) {
            Some(wait) if counts_only(job.status.as_ref(), new) => held = Some(wait),
            _ => status = Some(new.clone()),
        }
    }
    let key = if !lifecycle::finished(Some(new)) || keep_ssh_secrets || observed.key_retired {
        Key::Keep
    } else if recent(new, now) || finishing(job, new) {
        Key::Delete
    } else {
        Key::Forget
    };
    Updates {
        status,
        held,
        key,
        delete: delete(job, observed, &decision.delete),
    }
}

/// Whether a condition of `status` changed within [`KEY_RETIREMENT`] of `now`.
fn recent(status: &TrainJobStatus, now: &Time) -> bool {
    status.conditions.iter().filter(|c| c.status == "True").any(|c| {
        let age = now.0.duration_since(c.last_transition_time.0);
        age.as_secs() < KEY_RETIREMENT.as_secs() as i64
    })
}

/// Whether `new` differs from `old` in `jobsStatus` alone: pod counts, no condition or restart.
fn counts_only(old: Option<&TrainJobStatus>, new: &TrainJobStatus) -> bool {
    let old = TrainJobStatus {
        jobs_status: new.jobs_status.clone(),
        ..old.cloned().unwrap_or_default()
    };
    old == *new
}

/// The pods named in `names`. When they are exactly the job's live workers of one attempt (a job
/// that completed or failed) and no pod that is not the job's carries its labels (a collection
/// delete selects by label), one collection delete removes them all.
fn delete(job: &TrainJob, observed: &Observed, names: &[String]) -> Delete {
    let on_lost_node = |p: &Pod| {
        let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
        node.is_some_and(|n| observed.lost_nodes.contains_key(n))
    };
    let forced = observed.pods.iter().any(|p| on_lost_node(p));
    if names.len() > 1 && observed.foreign.is_empty() && !forced {
        let live: Vec<&Pod> = observed
            .pods
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| live_worker(p))
            .collect();
        let live_names: BTreeSet<&str> = live.iter().filter_map(|p| p.metadata.name.as_deref()).collect();
        let deleting: BTreeSet<&str> = names.iter().map(String::as_str).collect();
        // Selected by attempt too: the next attempt's pods may exist already, unseen.
        let attempts: BTreeSet<&str> = live
            .iter()
            .filter_map(|p| p.metadata.labels.as_ref()?.get(names::RESTART_ATTEMPT_LABEL))
            .map(String::as_str)
            .collect();
        if let (true, [attempt]) = (live_names == deleting, Vec::from_iter(attempts).as_slice()) {
            let job = job.metadata.name.as_deref().unwrap_or_default();
            return Delete::Workers {
                labels: format!(
                    "{}={job},{}={NODE},{}={attempt}",
                    names::TRAINJOB_NAME_LABEL,
                    names::JOB_ROLE_LABEL,
                    names::RESTART_ATTEMPT_LABEL,
                ),
                fields: "status.phase!=Succeeded,status.phase!=Failed".into(),
            };
        }
    }
    Delete::Each(
        observed
            .pods
            .iter()
            .filter(|p| p.metadata.name.as_ref().is_some_and(|n| names.contains(n)))
            .map(|p| PodDelete {
                name: p.metadata.name.clone().unwrap_or_default(),
                uid: p.metadata.uid.clone(),
                force: on_lost_node(p),
            })
            .collect(),
    )
}

/// A worker pod that is Pending or Running and not being deleted: what a collection delete of
/// the job's unfinished workers selects (it also re-deletes pods on their way out, harmlessly).
fn live_worker(pod: &Pod) -> bool {
    let labels = pod.metadata.labels.as_ref();
    let role = labels
        .and_then(|l| l.get(names::JOB_ROLE_LABEL))
        .map(String::as_str);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    role == Some(NODE)
        && pod.metadata.deletion_timestamp.is_none()
        && matches!(phase, Some("Pending" | "Running"))
}

/// The fields of the Service this operator sets, compared with what the cache holds (which
/// keeps no more of a Service's spec than these: `controller::watches::trim_service`).
pub(crate) fn service_matches(cached: &Service, desired: &Service) -> bool {
    let (Some(have), Some(want)) = (&cached.spec, &desired.spec) else {
        return false;
    };
    have.selector == want.selector
        && have.publish_not_ready_addresses == want.publish_not_ready_addresses
        && have.cluster_ip == want.cluster_ip
}
