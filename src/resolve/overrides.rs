//! What a TrainJob changes in its runtime's pod templates: `spec.trainer` and `spec.initializer`
//! overrides, then `spec.runtimePatches` in list order.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvFromSource, EnvVar, PodSpec, PodTemplateSpec, ResourceRequirements, SecretEnvSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::ResolveError;
use crate::api::{
    ANCESTOR_DATASET_INITIALIZER, ANCESTOR_MODEL_INITIALIZER, NODE, PodSpecPatch, RuntimePatch, TrainJob,
    Trainer,
};
use crate::merge::{merge_resources, upsert_by, upsert_env};
use crate::plan::JobPlan;

/// `spec.trainer` on one MPI pod: image and env on every `node` container (workers need the same
/// program and environment as the launcher, kubeflow/trainer#2825 and #3427), command and args on
/// the trainer step only, resources on every MPI host.
pub(super) fn apply_trainer(pod: &mut PodSpec, trainer: &Trainer, is_trainer_step: bool, is_host: bool) {
    for c in pod.containers.iter_mut().filter(|c| c.name == NODE) {
        if let Some(image) = &trainer.image {
            c.image = Some(image.clone());
        }
        if is_trainer_step {
            if !trainer.command.is_empty() {
                c.command = Some(trainer.command.clone());
            }
            if !trainer.args.is_empty() {
                c.args = Some(trainer.args.clone());
            }
        }
        upsert_env(c, &trainer.env);
        if is_host && let Some(resources) = &trainer.resources_per_node {
            merge_resources(c.resources.get_or_insert_default(), resources);
        }
    }
}

/// `spec.initializer` on the initializer steps: `STORAGE_URI`, env and the credentials Secret.
pub(super) fn apply_initializer(pod: &mut PodSpec, job: &TrainJob, step: Option<&str>) {
    let Some(step) = step else { return };
    let Some(settings) = job.spec.initializer.as_ref().and_then(|i| i.for_step(step)) else {
        return;
    };
    let (uri, env, secret) = (&settings.storage_uri, &settings.env, &settings.secret_ref);
    // The step's container is named after it (admission checks that it exists).
    for c in pod.containers.iter_mut().filter(|c| c.name == step) {
        if let Some(uri) = uri {
            upsert_env(
                c,
                &[EnvVar {
                    name: crate::api::STORAGE_URI_ENV.into(),
                    value: Some(uri.clone()),
                    value_from: None,
                }],
            );
        }
        upsert_env(c, env);
        if let Some(secret) = secret {
            c.env_from.get_or_insert_default().push(EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: secret.name.clone(),
                    optional: None,
                }),
                ..Default::default()
            });
        }
    }
}

pub(super) fn apply_patch(
    jobs: &mut [JobPlan],
    patch: &RuntimePatch,
    runtime: &str,
) -> Result<(), ResolveError> {
    let Some(rjobs) = patch
        .training_runtime_spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.spec.as_ref())
        .map(|s| &s.replicated_jobs)
    else {
        return Ok(());
    };
    for rpatch in rjobs {
        let Some(target) = jobs.iter_mut().find(|j| j.name == rpatch.name) else {
            return Err(ResolveError::PatchUnknownJob {
                manager: patch.manager.clone(),
                job: rpatch.name.clone(),
                runtime: runtime.into(),
            });
        };
        let Some(pod_patch) = rpatch
            .template
            .as_ref()
            .and_then(|t| t.spec.as_ref())
            .and_then(|s| s.template.as_ref())
        else {
            continue;
        };
        if let Some(meta) = &pod_patch.metadata {
            let m = target.template.metadata.get_or_insert_default();
            m.labels.get_or_insert_default().extend(meta.labels.clone());
            m.annotations
                .get_or_insert_default()
                .extend(meta.annotations.clone());
        }
        if let Some(spec) = &pod_patch.spec {
            let unknown = |container: &str| ResolveError::PatchUnknownContainer {
                manager: patch.manager.clone(),
                job: rpatch.name.clone(),
                container: container.into(),
                runtime: runtime.into(),
            };
            patch_pod(
                target.template.spec.get_or_insert_default(),
                spec,
                &patch.manager,
                unknown,
            )?;
        }
    }
    Ok(())
}

fn patch_pod(
    pod: &mut PodSpec,
    patch: &PodSpecPatch,
    manager: &str,
    unknown: impl Fn(&str) -> ResolveError,
) -> Result<(), ResolveError> {
    if let Some(sa) = &patch.service_account_name {
        pod.service_account_name = Some(sa.clone());
    }
    for volume in &patch.volumes {
        upsert_by(pod.volumes.get_or_insert_default(), volume.clone(), |v| &v.name);
    }
    for (patches, containers) in [
        (
            &patch.init_containers,
            pod.init_containers.get_or_insert_default(),
        ),
        (&patch.containers, &mut pod.containers),
    ] {
        for cp in patches {
            let c = containers
                .iter_mut()
                .find(|c| c.name == cp.name)
                .ok_or_else(|| unknown(&cp.name))?;
            if !cp.env.is_empty() {
                if [NODE, ANCESTOR_DATASET_INITIALIZER, ANCESTOR_MODEL_INITIALIZER]
                    .contains(&cp.name.as_str())
                {
                    return Err(ResolveError::PatchEnvOnStepContainer {
                        manager: manager.into(),
                        container: cp.name.clone(),
                    });
                }
                upsert_env(c, &cp.env);
            }
            for mount in &cp.volume_mounts {
                upsert_by(c.volume_mounts.get_or_insert_default(), mount.clone(), |m| {
                    &m.name
                });
            }
            if let Some(sc) = &cp.security_context {
                c.security_context = Some(sc.clone());
            }
        }
    }
    if pod.init_containers.as_ref().is_some_and(Vec::is_empty) {
        pod.init_containers = None;
    }
    for secret in &patch.image_pull_secrets {
        upsert_by(
            pod.image_pull_secrets.get_or_insert_default(),
            secret.clone(),
            |s| &s.name,
        );
    }
    if let Some(sc) = &patch.security_context {
        pod.security_context = Some(sc.clone());
    }
    if !patch.node_selector.is_empty() {
        pod.node_selector
            .get_or_insert_default()
            .extend(patch.node_selector.clone());
    }
    if let Some(affinity) = &patch.affinity {
        pod.affinity = Some(affinity.clone());
    }
    if !patch.tolerations.is_empty() {
        pod.tolerations = Some(patch.tolerations.clone());
    }
    for gate in &patch.scheduling_gates {
        upsert_by(pod.scheduling_gates.get_or_insert_default(), gate.clone(), |g| {
            &g.name
        });
    }
    Ok(())
}

pub(super) fn gpu_count(resources: &ResourceRequirements) -> Option<i32> {
    let find = |m: &Option<BTreeMap<String, Quantity>>| {
        m.as_ref()?
            .iter()
            .find(|(k, _)| k.contains("gpu"))
            .and_then(|(_, q)| q.0.parse::<i32>().ok())
    };
    find(&resources.requests).or_else(|| find(&resources.limits))
}

pub(super) fn node_container_gpus(template: &PodTemplateSpec) -> Option<i32> {
    template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == NODE)?
        .resources
        .as_ref()
        .and_then(gpu_count)
}
