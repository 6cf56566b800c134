//! `volumeClaimPolicies` (JobSet's, which Trainer v2.3 runtimes carry): each template becomes one
//! claim per job, `<template>-<job>`, mounted by every pod whose containers mount a volume of the
//! template's name, and deleted with the job unless `retentionPolicy.whenDeleted` is `Retain`.
//! The rules are JobSet's: a template is named, has no namespace, is mounted somewhere, and no
//! pod template defines a volume of its name.

use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, PodSpec, Volume};

use super::ResolveError;
use crate::api::VolumeClaimPolicy;
use crate::plan::{Claim, JobPlan};

/// The claims of `policies` for the job `job_name`, each mounted into the pods of `jobs` that
/// use it. `runtime`: how messages name the runtime.
pub(super) fn claims(
    runtime: &str,
    job_name: &str,
    policies: &[VolumeClaimPolicy],
    jobs: &mut [JobPlan],
) -> Result<Vec<Claim>, ResolveError> {
    let mut claims: Vec<Claim> = Vec::new();
    for (i, policy) in policies.iter().enumerate() {
        let retain = match policy
            .retention_policy
            .as_ref()
            .and_then(|r| r.when_deleted.as_deref())
        {
            None | Some("Delete") => false,
            Some("Retain") => true,
            Some(other) => {
                return Err(bad(
                    runtime,
                    format!("spec.template.spec.volumeClaimPolicies[{i}].retentionPolicy.whenDeleted"),
                    format!("must be Delete or Retain, not {other:?}"),
                ));
            }
        };
        for (j, template) in policy.templates.iter().enumerate() {
            let at = format!("spec.template.spec.volumeClaimPolicies[{i}].templates[{j}]");
            let volume = template.metadata.name.clone().unwrap_or_default();
            if volume.is_empty() {
                return Err(bad(
                    runtime,
                    at,
                    "needs metadata.name: it is the name of the volume the containers mount".into(),
                ));
            }
            let at = format!("{at} ({volume:?})");
            let problem = if !dns_label(&volume) {
                Some("metadata.name must be a DNS label (at most 63 lowercase letters, digits and '-'), as pod volume names are".into())
            } else if template.metadata.namespace.is_some() {
                Some("must not set metadata.namespace: the claim is made in the TrainJob's namespace".into())
            } else if claims
                .iter()
                .any(|c| c.template.metadata.name.as_deref() == Some(volume.as_str()))
            {
                Some(
                    "names a template that an earlier template names already: give each a name of its own"
                        .into(),
                )
            } else {
                requests_nothing(template)
            };
            if let Some(problem) = problem {
                return Err(bad(runtime, at, problem));
            }
            if let Some(rjob) = jobs.iter().find(|j| pod(j).is_some_and(|p| defines(p, &volume))) {
                return Err(bad(
                    runtime,
                    at,
                    format!(
                        "replicated job {:?} defines a volume of that name itself: remove it there (the claim provides it) or rename the template",
                        rjob.name
                    ),
                ));
            }
            let name = format!("{volume}-{job_name}");
            let mut mounted = false;
            for pod in jobs.iter_mut().filter_map(|j| j.template.spec.as_mut()) {
                if mounts(pod, &volume) {
                    mounted = true;
                    pod.volumes.get_or_insert_default().push(Volume {
                        name: volume.clone(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: name.clone(),
                            read_only: None,
                        }),
                        ..Default::default()
                    });
                }
            }
            if !mounted {
                return Err(bad(
                    runtime,
                    at,
                    format!(
                        "no container of any replicated job mounts a volume named {volume:?}: add a volumeMount of that name where the data is used, or remove the template"
                    ),
                ));
            }
            claims.push(Claim {
                name,
                template: template.clone(),
                retain,
            });
        }
    }
    Ok(claims)
}

fn bad(runtime: &str, at: String, problem: String) -> ResolveError {
    ResolveError::BadClaimTemplate {
        runtime: runtime.into(),
        at,
        problem,
    }
}

/// What the API server would refuse in a claim made from `template`, said before any object
/// of the job exists.
fn requests_nothing(template: &k8s_openapi::api::core::v1::PersistentVolumeClaim) -> Option<String> {
    let spec = template.spec.as_ref();
    if spec
        .and_then(|s| s.access_modes.as_ref())
        .is_none_or(Vec::is_empty)
    {
        return Some(
            "needs spec.accessModes (ReadWriteOnce, or ReadWriteMany for pods on several nodes)".into(),
        );
    }
    let storage = spec
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"));
    match storage.map(crate::quota::parse) {
        None => Some("needs spec.resources.requests.storage (for example 1Gi)".into()),
        Some(Some(bytes)) if bytes > 0.0 => None,
        Some(_) => Some(format!(
            "spec.resources.requests.storage {:?} is not a positive quantity (for example 1Gi)",
            storage.map(|q| q.0.as_str()).unwrap_or_default()
        )),
    }
}

fn dns_label(name: &str) -> bool {
    name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn pod(job: &JobPlan) -> Option<&PodSpec> {
    job.template.spec.as_ref()
}

fn defines(pod: &PodSpec, volume: &str) -> bool {
    pod.volumes.iter().flatten().any(|v| v.name == volume)
}

fn mounts(pod: &PodSpec, volume: &str) -> bool {
    pod.containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .any(|m| m.name == volume)
}
