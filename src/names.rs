//! Names and labels of the objects a TrainJob owns. Deterministic, so a restarted operator finds
//! what exists and creates only what is missing.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::api::{GROUP, TrainJob};
use crate::reasons;

/// Field manager of every server-side apply this operator makes.
pub const FIELD_MANAGER: &str = "trainjob-operator";

/// `app.kubernetes.io/managed-by` value on every child; the pod watch selects on it.
pub const MANAGED_BY: &str = "trainjob-operator";
/// Label key of [`MANAGED_BY`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Our label: the owning TrainJob.
pub const TRAINJOB_NAME_LABEL: &str = "trainer.kubeflow.org/trainjob-name";
/// Our label: the replicated job a pod belongs to.
pub const REPLICATED_JOB_LABEL: &str = "trainer.kubeflow.org/replicated-job";
/// Our label: `launcher`, `node`, or the replicated job name for other steps.
pub const JOB_ROLE_LABEL: &str = "trainer.kubeflow.org/job-role";
/// Our label: which whole-gang restart created the pod (0 for the first run).
pub const RESTART_ATTEMPT_LABEL: &str = "trainer.kubeflow.org/restart-attempt";

/// JobSet-compatible labels the Kubeflow SDK selects pods by.
pub const JOBSET_NAME_LABEL: &str = "jobset.sigs.k8s.io/jobset-name";
/// JobSet-compatible: the replicated job name.
pub const JOBSET_REPLICATED_JOB_LABEL: &str = "jobset.sigs.k8s.io/replicatedjob-name";
/// JobSet-compatible: index of the Job within its replicated job.
pub const JOBSET_JOB_INDEX_LABEL: &str = "jobset.sigs.k8s.io/job-index";
/// Indexed-Job compatible: index of the pod within its Job.
pub const COMPLETION_INDEX_LABEL: &str = "batch.kubernetes.io/job-completion-index";

/// Annotation that keeps Istio from injecting a sidecar (it breaks MPI's SSH and ports).
pub const ISTIO_INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";

/// The annotation in which `kubectl apply` keeps the manifest it applied: as large as the rest
/// of an object, and read by nothing here.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Whether `s` is an RFC 1123 DNS subdomain: dot-separated labels of lower-case letters, digits
/// and `-` (not at either end of a label), 253 characters at most.
pub fn is_dns_subdomain(s: &str) -> bool {
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    s.len() <= 253 && s.split('.').all(label)
}

/// The SSH key Secret of a job.
pub fn ssh_secret(job: &str) -> String {
    format!("{job}-mpi-ssh-auth")
}

/// The hostfile ConfigMap of a job.
pub fn hostfile_configmap(job: &str) -> String {
    format!("{job}-mpi-hostfile")
}

/// The ConfigMap holding the runtime frozen at the job's first reconcile (upstream v2.3 name).
pub fn runtime_snapshot(job: &str) -> String {
    format!("{job}-runtime-snapshot")
}

/// Pod `index` of Job `job_index` of replicated job `rjob`: `<job>-<rjob>-<jobIndex>-<index>`.
pub fn pod(job: &str, rjob: &str, job_index: i32, index: i32) -> String {
    format!("{job}-{rjob}-{job_index}-{index}")
}

/// The controller owner reference to `job`: deleting the job garbage-collects the child.
pub fn owner_ref(job: &TrainJob) -> OwnerReference {
    OwnerReference {
        api_version: TrainJob::api_version(&()).into_owned(),
        kind: TrainJob::kind(&()).into_owned(),
        name: job.metadata.name.clone().unwrap_or_default(),
        uid: job.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether the job with `uid` is the controller owner of the object with `meta`. Only such
/// children are the job's: another object that merely carries its labels is never counted,
/// adopted or deleted.
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Why an object named after a job is not the job's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OwnerError {
    #[error(
        "{kind} {name} already exists and belongs to {owner}, not to this TrainJob: delete that {kind} and re-create the TrainJob, or give the TrainJob another name"
    )]
    Conflict {
        kind: &'static str,
        name: String,
        owner: String,
    },
    #[error(
        "{kind} {name} still belongs to an earlier TrainJob of the same name; waiting for the garbage collector to remove it"
    )]
    Leftover { kind: &'static str, name: String },
}

impl OwnerError {
    /// The `Failed` reason of someone else's object; `None` for a leftover, which goes soon.
    pub fn permanent(&self) -> Option<&'static str> {
        match self {
            OwnerError::Conflict { .. } => Some(reasons::OBJECT_CONFLICT),
            OwnerError::Leftover { .. } => None,
        }
    }

    /// Stable label for the error metric.
    pub fn label(&self) -> &'static str {
        match self {
            OwnerError::Conflict { .. } => "object_conflict",
            OwnerError::Leftover { .. } => "leftover_object",
        }
    }
}

/// Checks that `job` controls the object of `kind` with `meta`, which is named after it: an
/// object of an earlier job of the same name is a leftover the garbage collector removes soon;
/// anyone else's is a conflict.
pub fn check_owner(job: &TrainJob, kind: &'static str, meta: &ObjectMeta) -> Result<(), OwnerError> {
    if controlled_by(meta, job.metadata.uid.as_deref().unwrap_or_default()) {
        return Ok(());
    }
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let earlier = |o: &&OwnerReference| {
        o.kind == TrainJob::kind(&())
            && o.api_version.starts_with(GROUP)
            && Some(&o.name) == job.metadata.name.as_ref()
    };
    if refs.iter().any(|o| earlier(&o)) {
        return Err(OwnerError::Leftover { kind, name });
    }
    let owner = refs
        .first()
        .map(|o| format!("{} {}", o.kind, o.name))
        .unwrap_or_else(|| "no TrainJob (it has no owner)".into());
    Err(OwnerError::Conflict { kind, name, owner })
}

/// Labels every child of `job` carries.
pub fn child_labels(job: &TrainJob) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
        (
            TRAINJOB_NAME_LABEL.to_string(),
            job.metadata.name.clone().unwrap_or_default(),
        ),
    ])
}

/// Metadata of the child `name` of `job`: namespace, labels and owner reference.
pub fn child_meta(job: &TrainJob, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: job.metadata.namespace.clone(),
        labels: Some(child_labels(job)),
        owner_references: Some(vec![owner_ref(job)]),
        ..Default::default()
    }
}
