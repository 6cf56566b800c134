//! The job's PersistentVolumeClaims, from the runtime's `volumeClaimPolicies` (`plan.claims`):
//! the template's spec, labels and annotations, the job's labels, and the job as owner unless
//! the policy retains the claim, so that deleting the job deletes the claim (and, through the
//! StorageClass's reclaim policy, its volume).

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::TrainJob;
use crate::names;
use crate::plan::{Claim, Plan};

/// The claims of `job`, in the runtime's order.
pub fn claims(job: &TrainJob, plan: &Plan) -> Vec<PersistentVolumeClaim> {
    plan.claims.iter().map(|c| claim(job, c)).collect()
}

fn claim(job: &TrainJob, claim: &Claim) -> PersistentVolumeClaim {
    let mut labels = claim.template.metadata.labels.clone().unwrap_or_default();
    labels.extend(names::child_labels(job));
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(claim.name.clone()),
            namespace: job.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: claim.template.metadata.annotations.clone(),
            owner_references: (!claim.retain).then(|| vec![names::owner_ref(job)]),
            ..Default::default()
        },
        spec: claim.template.spec.clone(),
        status: None,
    }
}
