//! Pods and the headless Service of a job, built from a [`Plan`]. Pure functions.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, KeyToPath, Pod, PodSecurityContext, SecretVolumeSource, Service, ServiceSpec,
    Volume, VolumeMount,
};

use crate::api::{NODE, TrainJob};
use crate::env::{self, HOSTFILE_DIR};
use crate::merge::upsert_env;
use crate::names::{self, *};
use crate::plan::{JobPlan, Plan, PodIndex, Role};
use crate::{hostfile, ssh};

/// Name of the SSH Secret volume.
pub const SSH_VOLUME: &str = "mpi-ssh-auth";
/// Name of the hostfile ConfigMap volume.
pub const HOSTFILE_VOLUME: &str = "mpi-hostfile";

/// The pod `at` of replicated job `rjob`, for whole-gang restart `attempt`.
pub fn pod(job: &TrainJob, plan: &Plan, rjob: &JobPlan, at: PodIndex, attempt: i32) -> Pod {
    let job_name = job.metadata.name.as_deref().unwrap_or_default();
    let name = names::pod(job_name, &rjob.name, at.job_index, at.index);
    let template = rjob.template.clone();
    let role = match rjob.role {
        Role::Launcher => crate::api::LAUNCHER,
        Role::Node => NODE,
        Role::Other => rjob.name.as_str(),
    };

    let mut meta = names::child_meta(job, &name);
    let mut labels: BTreeMap<String, String> = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.extend(meta.labels.take().unwrap_or_default());
    labels.extend([
        (REPLICATED_JOB_LABEL.to_string(), rjob.name.clone()),
        (JOB_ROLE_LABEL.to_string(), role.to_string()),
        (RESTART_ATTEMPT_LABEL.to_string(), attempt.to_string()),
        (JOBSET_NAME_LABEL.to_string(), job_name.to_string()),
        (JOBSET_REPLICATED_JOB_LABEL.to_string(), rjob.name.clone()),
        (JOBSET_JOB_INDEX_LABEL.to_string(), at.job_index.to_string()),
        (COMPLETION_INDEX_LABEL.to_string(), at.index.to_string()),
    ]);
    meta.labels = Some(labels);
    let mut annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    annotations.insert(ISTIO_INJECT_ANNOTATION.into(), "false".into());
    meta.annotations = Some(annotations);

    let mut spec = template.spec.unwrap_or_default();
    spec.hostname = Some(name);
    spec.subdomain = Some(plan.subdomain.clone());
    // A whole MPI world restarts together (the operator does that); a container restarted in
    // place would rejoin nothing.
    spec.restart_policy = Some("Never".into());
    spec.automount_service_account_token.get_or_insert(false);

    if rjob.role != Role::Other {
        let mode = ssh_file_mode(&mut spec);
        spec.volumes
            .get_or_insert_default()
            .push(ssh_volume(job_name, mode));
        let is_launcher = rjob.role == Role::Launcher;
        if is_launcher {
            spec.volumes
                .get_or_insert_default()
                .push(hostfile_volume(job_name));
        }
        for c in spec.containers.iter_mut().filter(|c| c.name == NODE) {
            let mounts = c.volume_mounts.get_or_insert_default();
            mounts.push(VolumeMount {
                name: SSH_VOLUME.into(),
                mount_path: plan.ssh_mount_path.clone(),
                read_only: Some(true),
                ..Default::default()
            });
            if is_launcher {
                mounts.push(VolumeMount {
                    name: HOSTFILE_VOLUME.into(),
                    mount_path: HOSTFILE_DIR.into(),
                    read_only: Some(true),
                    ..Default::default()
                });
            }
            let vars = if is_launcher {
                env::launcher_env(plan.implementation, plan.slots)
            } else {
                env::worker_env()
            };
            upsert_env(c, &vars);
        }
    }
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

/// File mode for the SSH files. OpenSSH refuses a private key that its owner's group can read,
/// and Secret files are owned by root: root gets 0600; a non-root user reads through the pod's
/// fsGroup with 0640 (set to the user's group when the runtime leaves it out). Never
/// world-readable.
fn ssh_file_mode(spec: &mut k8s_openapi::api::core::v1::PodSpec) -> i32 {
    let node = spec.containers.iter().find(|c| c.name == NODE);
    let container_ctx = node.and_then(|c| c.security_context.as_ref());
    let pod_ctx = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    let user = container_ctx.and_then(|s| s.run_as_user).or(pod_ctx.run_as_user);
    match user {
        Some(uid) if uid != 0 => {
            let group = container_ctx
                .and_then(|s| s.run_as_group)
                .or(pod_ctx.run_as_group)
                .unwrap_or(uid);
            pod_ctx.fs_group.get_or_insert(group);
            0o640
        }
        _ => 0o600,
    }
}

fn ssh_volume(job: &str, mode: i32) -> Volume {
    let item = |key: &str, path: &str| KeyToPath {
        key: key.into(),
        path: path.into(),
        mode: Some(mode),
    };
    Volume {
        name: SSH_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names::ssh_secret(job)),
            default_mode: Some(0o400),
            items: Some(vec![
                item(ssh::PRIVATE_KEY, "id_rsa"),
                item(ssh::PUBLIC_KEY, "id_rsa.pub"),
                item(ssh::PUBLIC_KEY, "authorized_keys"),
            ]),
            optional: None,
        }),
        ..Default::default()
    }
}

fn hostfile_volume(job: &str) -> Volume {
    Volume {
        name: HOSTFILE_VOLUME.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: names::hostfile_configmap(job),
            items: Some(vec![KeyToPath {
                key: hostfile::KEY.into(),
                path: hostfile::KEY.into(),
                mode: Some(0o444),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The headless Service `<subdomain>` that gives every pod its DNS name.
pub fn service(job: &TrainJob, plan: &Plan) -> Service {
    let job_name = job.metadata.name.clone().unwrap_or_default();
    Service {
        metadata: names::child_meta(job, &plan.subdomain),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(BTreeMap::from([(TRAINJOB_NAME_LABEL.to_string(), job_name)])),
            // MPI resolves every host before any is ready (kubeflow/trainer PR #3783).
            publish_not_ready_addresses: Some(plan.publish_not_ready),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests;
