//! Admission rules: pure functions from the objects of a request (and the runtime a TrainJob
//! references) to a refusal or warnings. Jobs go through the reconciler's own `resolve` and
//! `validate`, so admission refuses exactly what would fail later, in the same words.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use crate::api::{
    ANCESTOR_DATASET_INITIALIZER, ANCESTOR_LABEL, ANCESTOR_MODEL_INITIALIZER, ANCESTOR_TRAINER, DEPRECATED,
    NODE, RuntimePatch, SUPPORT_LABEL, TrainJob, TrainingRuntimeSpec,
};
use crate::plan::Cluster;
use crate::resolve::{Runtime, resolve};
use crate::validate::{Limits, validate};

/// Warnings for the client when admitted, or the refusal.
pub type Verdict = Result<Vec<String>, String>;

/// Whether checking this change needs the referenced runtime: a new job, or new runtime patches.
/// Everything else the runtime decides is immutable once the job exists.
pub fn needs_runtime(job: &TrainJob, old: Option<&TrainJob>) -> bool {
    old.is_none_or(|old| patches_changed(old, job))
}

/// Checks a TrainJob being created (`old` is `None`) or updated. `runtime` is the runtime it
/// references when [`needs_runtime`] says so and it could be read.
pub fn trainjob(
    job: &TrainJob,
    old: Option<&TrainJob>,
    runtime: Option<&Runtime>,
    limits: &Limits,
) -> Verdict {
    for (i, patch) in job.spec.runtime_patches.iter().enumerate() {
        if !domain_prefixed(&patch.manager) {
            return Err(format!(
                "spec.runtimePatches[{i}].manager {:?} must be a domain-prefixed path such as kueue.x-k8s.io/manager or example.com/my-tool",
                patch.manager
            ));
        }
    }
    if let Some(old) = old
        && patches_changed(old, job)
    {
        patches_may_change(old, job)?;
    }
    let Some(rt) = runtime else {
        return Ok(Vec::new());
    };
    // The cluster's settings change no verdict: they shape pods, not what is valid.
    let plan = resolve(job, rt, &Cluster::default()).map_err(|e| e.to_string())?;
    validate(job, &rt.label, &plan, limits).map_err(|e| e.to_string())?;
    crate::validate::initializers(job, &rt.label, &plan).map_err(|e| e.to_string())?;
    Ok(rt
        .deprecated
        .then(|| deprecation_warning(&rt.label))
        .into_iter()
        .collect())
}

/// As upstream, and as Kueue relies on: patches change only while the job is (or is becoming)
/// suspended and none of its pods is active, so running pods never disagree with the patches.
fn patches_may_change(old: &TrainJob, job: &TrainJob) -> Result<(), String> {
    let suspended = |j: &TrainJob| j.spec.suspend.unwrap_or(false);
    if !suspended(old) && !suspended(job) {
        return Err(
            "spec.runtimePatches can change only while the TrainJob is suspended: set spec.suspend to true, wait until its pods are gone, then change the patches"
                .into(),
        );
    }
    let active: Vec<String> = old
        .status
        .iter()
        .flat_map(|s| &s.jobs_status)
        .filter(|j| j.active > 0)
        .map(|j| {
            format!(
                "{} {} in {:?}",
                j.active,
                if j.active == 1 { "pod" } else { "pods" },
                j.name
            )
        })
        .collect();
    if active.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "spec.runtimePatches cannot change while the TrainJob still has active pods ({}): wait until status.jobsStatus shows none active, then retry",
            active.join(", ")
        ))
    }
}

/// Patches compared without their `time`, which the defaulting webhook stamps.
fn patches_changed(old: &TrainJob, job: &TrainJob) -> bool {
    let untimed = |j: &TrainJob| -> Vec<RuntimePatch> {
        j.spec
            .runtime_patches
            .iter()
            .map(|p| RuntimePatch {
                time: None,
                ..p.clone()
            })
            .collect()
    };
    untimed(old) != untimed(job)
}

/// `<DNS subdomain>/<path>`, like `kueue.x-k8s.io/manager`.
fn domain_prefixed(manager: &str) -> bool {
    let Some((domain, path)) = manager.split_once('/') else {
        return false;
    };
    domain.contains('.')
        && crate::names::is_dns_subdomain(domain)
        && !path.is_empty()
        && !path.split('/').any(str::is_empty)
}

/// JSON-patch operations that stamp `spec.runtimePatches[].time`, as upstream's defaulting
/// webhook does: now for a new or changed entry, the previous time for an unchanged one.
pub fn stamp_patch_times(job: &TrainJob, old: Option<&TrainJob>, now: &Time) -> Vec<serde_json::Value> {
    let previous: BTreeMap<&str, &RuntimePatch> = old
        .iter()
        .flat_map(|o| &o.spec.runtime_patches)
        .map(|p| (p.manager.as_str(), p))
        .collect();
    let mut ops = Vec::new();
    for (i, patch) in job.spec.runtime_patches.iter().enumerate() {
        let unchanged = previous
            .get(patch.manager.as_str())
            .filter(|prev| prev.training_runtime_spec == patch.training_runtime_spec && prev.time.is_some());
        let time = match unchanged {
            Some(prev) => prev.time.clone(),
            None if patch.time.is_some() && old.is_none() => continue,
            None => Some(now.clone()),
        };
        if time != patch.time {
            ops.push(json!({"op": "add", "path": format!("/spec/runtimePatches/{i}/time"), "value": time}));
        }
    }
    ops
}

/// Checks a TrainingRuntime or ClusterTrainingRuntime (`label` is `Kind/name`).
pub fn runtime(
    label: &str,
    spec: &TrainingRuntimeSpec,
    labels: &BTreeMap<String, String>,
    limits: &Limits,
) -> Verdict {
    let mut warnings = Vec::new();
    let policy = spec.ml_policy.clone().unwrap_or_default();
    let set: Vec<&str> = [
        ("mpi", policy.mpi.is_some()),
        ("torch", policy.torch.is_some()),
        ("jax", policy.jax.is_some()),
        ("xgboost", policy.xgboost.is_some()),
        ("flux", policy.flux.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    match set.as_slice() {
        [] => {
            return Err(
                "spec.mlPolicy: set exactly one ML policy; this operator runs MPI jobs, so set spec.mlPolicy.mpi".into(),
            );
        }
        ["mpi"] => {}
        [other] => warnings.push(format!(
            "{label} has spec.mlPolicy.{other}, but this operator runs only MPI: TrainJobs on it will fail with TrainingRuntimeNotSupported"
        )),
        several => {
            return Err(format!(
                "spec.mlPolicy: set exactly one ML policy, not {}",
                several.join(" and ")
            ));
        }
    }
    let jobs = spec.template.spec.iter().flat_map(|s| &s.replicated_jobs);
    for (i, rjob) in jobs.enumerate() {
        let meta = rjob.template.metadata.as_ref();
        let Some(step) = meta
            .and_then(|m| m.labels.as_ref())
            .and_then(|l| l.get(ANCESTOR_LABEL))
        else {
            continue;
        };
        let container = match step.as_str() {
            ANCESTOR_TRAINER => NODE,
            ANCESTOR_DATASET_INITIALIZER => ANCESTOR_DATASET_INITIALIZER,
            ANCESTOR_MODEL_INITIALIZER => ANCESTOR_MODEL_INITIALIZER,
            _ => continue,
        };
        let at = format!("spec.template.spec.replicatedJobs[{i}] ({:?})", rjob.name);
        if rjob.replicas.unwrap_or(1) != 1 {
            return Err(format!(
                "{at}: replicas must be 1 on a replicated job labelled {ANCESTOR_LABEL}={step}; scale with spec.trainer.numNodes instead"
            ));
        }
        let pod = rjob.template.spec.as_ref().and_then(|j| j.template.spec.as_ref());
        if !pod.is_some_and(|p| p.containers.iter().any(|c| c.name == container)) {
            return Err(format!(
                "{at}: a replicated job labelled {ANCESTOR_LABEL}={step} needs a container named {container:?}"
            ));
        }
    }
    if set == ["mpi"] {
        // A job that overrides nothing must run on it: the runtime's own structure, images and
        // resources go through the same checks as every job will.
        let probe = TrainJob::new("probe", Default::default());
        let runtime = Runtime::new(label, spec.clone());
        let plan = resolve(&probe, &runtime, &Cluster::default()).map_err(|e| e.to_string())?;
        validate(&probe, label, &plan, limits).map_err(|e| e.to_string())?;
    }
    if labels.get(SUPPORT_LABEL).map(String::as_str) == Some(DEPRECATED) {
        warnings.push(deprecation_warning(label));
    }
    Ok(warnings)
}

/// The warning admission gives for a deprecated runtime.
pub fn deprecation_warning(label: &str) -> String {
    format!(
        "{label} is deprecated ({SUPPORT_LABEL}={DEPRECATED}) and may be removed: move to a supported runtime"
    )
}

#[cfg(test)]
mod tests;
