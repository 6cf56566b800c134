//! Pods and the headless Service of a job, built from a [`Plan`]. Pure functions.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, EmptyDirVolumeSource, KeyToPath, Pod, PodDNSConfig, PodSchedulingGroup,
    PodSecurityContext, PodSpec, ResourceRequirements, SecretVolumeSource, Service, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{gang, hostfile};
use crate::api::{NODE, TrainJob};
use crate::merge::upsert_env;
use crate::mpi::{self, HOSTFILE_DIR};
use crate::names::{self, *};
use crate::plan::{JobPlan, Plan, PodIndex, Role};
use crate::ssh;

/// Name of the SSH Secret volume.
pub const SSH_VOLUME: &str = "mpi-ssh-auth";
/// Name of the in-memory volume holding the private copy of the SSH files (root and unnamed users).
pub const SSH_COPY_VOLUME: &str = "mpi-ssh-copy";
/// Name of the init container that makes that copy.
pub const SSH_INIT: &str = "mpi-ssh-setup";
/// Name of the launcher's init container that waits for its own DNS record (Hydra).
pub const DNS_INIT: &str = "mpi-dns-wait";
/// Name of the launcher's init container that waits until SSH reaches every worker.
pub const WORKERS_INIT: &str = "mpi-wait-workers";
/// How long it waits for the workers of a gang (they may still be starting).
const WAIT_FOR_GANG_SECONDS: u32 = 600;
/// How long it waits behind a NetworkPolicy (the workers are Ready; the network plugin may not
/// yet admit the new launcher's address).
const WAIT_FOR_POLICY_SECONDS: u32 = 60;
/// Name of the hostfile ConfigMap volume.
pub const HOSTFILE_VOLUME: &str = "mpi-hostfile";

/// Where the init container sees the Secret and the copy.
const SECRET_DIR: &str = "/mnt/mpi-ssh-auth";
const COPY_DIR: &str = "/mnt/mpi-ssh-copy";

/// Copies the keys as the container's own user: the private key 0400, the public files 0644,
/// the directory 0700 where the user may change it (root; sshd's StrictModes checks it).
const COPY_SCRIPT: &str = "set -e; umask 077; \
cp /mnt/mpi-ssh-auth/id_rsa /mnt/mpi-ssh-auth/id_rsa.pub /mnt/mpi-ssh-auth/authorized_keys /mnt/mpi-ssh-copy/; \
chmod 0644 /mnt/mpi-ssh-copy/id_rsa.pub /mnt/mpi-ssh-copy/authorized_keys; \
chmod 0700 /mnt/mpi-ssh-copy 2>/dev/null || true";

/// Every pod of the replicated jobs `which` selects, for whole-gang restart `attempt`.
pub fn of_jobs(job: &TrainJob, plan: &Plan, attempt: i32, which: impl Fn(&JobPlan) -> bool) -> Vec<Pod> {
    plan.jobs
        .iter()
        .filter(|rjob| which(rjob))
        .flat_map(|rjob| rjob.indices().map(move |at| pod(job, plan, rjob, at, attempt)))
        .collect()
}

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
    spec.hostname = Some(name.clone());
    spec.subdomain = Some(plan.subdomain.clone());
    // A whole MPI world restarts together (the operator does that); a container restarted in
    // place would rejoin nothing.
    spec.restart_policy = Some("Never".into());
    spec.automount_service_account_token.get_or_insert(false);

    if gang::Plugin::of(plan) == Some(gang::Plugin::Volcano) {
        // Volcano's PodGroup means nothing to another scheduler: without this the gang would
        // silently not be one.
        spec.scheduler_name
            .get_or_insert_with(|| gang::VOLCANO_SCHEDULER.into());
    }
    let member = plan.gang_member(rjob.role);
    match gang::plugin_members(plan) {
        Some((gang::Plugin::Coscheduling, _)) if member => {
            labels_mut(&mut meta).insert(gang::COSCHEDULING_LABEL.into(), gang::pod_group_name(job_name));
        }
        Some((gang::Plugin::Volcano, _)) if member => {
            let annotations = meta.annotations.get_or_insert_default();
            annotations.insert(
                gang::VOLCANO_GROUP_ANNOTATION.into(),
                gang::pod_group_name(job_name),
            );
        }
        _ => {}
    }
    if member && plan.native_gang().is_some() {
        spec.scheduling_group = Some(PodSchedulingGroup {
            pod_group_name: Some(gang::pod_group_name(job_name)),
        });
    }
    if rjob.role != Role::Other {
        let namespace = job.metadata.namespace.as_deref().unwrap_or("default");
        dns(&mut spec, plan, namespace);
        let is_launcher = rjob.role == Role::Launcher;
        let copy = match node_user(&spec) {
            Some(uid) if uid != 0 => {
                share_keys(&mut spec, job_name, uid);
                false
            }
            _ => {
                copy_keys(&mut spec, job_name);
                true
            }
        };
        if is_launcher {
            spec.volumes
                .get_or_insert_default()
                .push(hostfile_volume(job_name));
            if plan.mpi().calls_back_by_name() {
                let fqdn = format!(
                    "{name}.{}.{namespace}.svc.{}",
                    plan.subdomain, plan.cluster.domain
                );
                wait_for_own_name(&mut spec, &fqdn);
            }
            if plan.launcher_in_gang() {
                wait_for_workers(&mut spec, plan, job_name, copy, WAIT_FOR_GANG_SECONDS);
            } else if plan.cluster.network_policies {
                wait_for_workers(&mut spec, plan, job_name, copy, WAIT_FOR_POLICY_SECONDS);
            }
        }
        if let Some(reporting) = &plan.cluster.reporting {
            // Before the launcher's variables: Open MPI forwards the ones the container has.
            super::reporting::inject(&mut spec, namespace, job_name, reporting);
        }
        for c in spec.containers.iter_mut().filter(|c| c.name == NODE) {
            let mounts = c.volume_mounts.get_or_insert_default();
            mounts.push(VolumeMount {
                name: (if copy { SSH_COPY_VOLUME } else { SSH_VOLUME }).into(),
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
                let launcher = mpi::Launcher {
                    slots: plan.slots,
                    may_be_root: copy,
                    runs_ranks: plan.launcher_as_node,
                };
                mpi::launcher_env(plan.mpi(), launcher, mpi::env_of(c))
            } else {
                mpi::worker_env()
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

fn labels_mut(
    meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> &mut BTreeMap<String, String> {
    meta.labels.get_or_insert_default()
}

/// Name resolution for MPI. Hydra's proxies (Intel MPI, MPICH) and PRRTE's tree spawn reach the
/// launcher and each other by bare hostname, which only resolves with the Service's domain in
/// the search list (as MPI Operator adds). Host-network pods would otherwise use the node's
/// resolver, which knows no pod names.
fn dns(spec: &mut PodSpec, plan: &Plan, namespace: &str) {
    let domain = format!("{}.{namespace}.svc.{}", plan.subdomain, plan.cluster.domain);
    let searches = spec
        .dns_config
        .get_or_insert_with(PodDNSConfig::default)
        .searches
        .get_or_insert_default();
    if !searches.contains(&domain) {
        searches.push(domain);
    }
    if spec.host_network == Some(true) && spec.dns_policy.is_none() {
        spec.dns_policy = Some("ClusterFirstWithHostNet".into());
    }
}

/// The uid the `node` container runs as, when the spec names one.
fn node_user(spec: &PodSpec) -> Option<i64> {
    let node = spec.containers.iter().find(|c| c.name == NODE);
    node.and_then(|c| c.security_context.as_ref())
        .and_then(|s| s.run_as_user)
        .or(spec.security_context.as_ref().and_then(|s| s.run_as_user))
}

/// A named non-root user reads the Secret directly through the pod's fsGroup (set to the user's
/// group when the runtime leaves it out): OpenSSH checks a key's mode only when the key belongs
/// to the user, and Secret files belong to root. 0640, never world-readable.
fn share_keys(spec: &mut PodSpec, job: &str, uid: i64) {
    let node = spec.containers.iter().find(|c| c.name == NODE);
    let group = node
        .and_then(|c| c.security_context.as_ref())
        .and_then(|s| s.run_as_group)
        .or(spec.security_context.as_ref().and_then(|s| s.run_as_group))
        .unwrap_or(uid);
    let pod_ctx = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    if pod_ctx.fs_group.is_none() {
        pod_ctx.fs_group = Some(group);
        // An injected fsGroup must not make the kubelet re-chown every volume (datasets
        // included) on every start.
        pod_ctx
            .fs_group_change_policy
            .get_or_insert_with(|| "OnRootMismatch".into());
    }
    spec.volumes.get_or_insert_default().push(ssh_volume(job, 0o640));
}

/// Root, or a user the spec does not name (the image's `USER`, an OpenShift-assigned uid): an
/// init container running as that same user copies the files into a private in-memory volume,
/// owned by the user with the modes OpenSSH demands. Mounting the Secret directly cannot work
/// for root once any fsGroup is set (the kubelet turns 0600 into 0640, which OpenSSH rejects as
/// too open), nor for an unnamed non-root user without one (root-owned 0600 is unreadable). The
/// Secret is mounted only in the init container, readable by whoever that user is.
fn copy_keys(spec: &mut PodSpec, job: &str) {
    let Some(node) = spec.containers.iter().find(|c| c.name == NODE) else {
        return;
    };
    let mut init = init_container(node, SSH_INIT, COPY_SCRIPT.into());
    init.volume_mounts = Some(vec![
        VolumeMount {
            name: SSH_VOLUME.into(),
            mount_path: SECRET_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: SSH_COPY_VOLUME.into(),
            mount_path: COPY_DIR.into(),
            ..Default::default()
        },
    ]);
    spec.init_containers.get_or_insert_default().insert(0, init);
    let volumes = spec.volumes.get_or_insert_default();
    volumes.push(ssh_volume(job, 0o444));
    volumes.push(Volume {
        name: SSH_COPY_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            // Key material stays in memory, never on the node's disk.
            medium: Some("Memory".into()),
            size_limit: Some(Quantity("1Mi".into())),
        }),
        ..Default::default()
    });
}

/// Hydra's proxies (Intel MPI, MPICH) connect back to the launcher by name, at once and without
/// retrying (`Implementation::calls_back_by_name`), and the launcher's DNS record appears only after its pod has an IP. An init
/// container (the `node` image, as the same user) waits until the name resolves in DNS, for at
/// most 60 s; after that mpirun runs anyway and reports what it finds. The name is asked for
/// with a final dot: the pod's own `/etc/hosts` holds it without one and would answer at once.
/// Images without `getent` skip the wait.
fn wait_for_own_name(spec: &mut PodSpec, fqdn: &str) {
    let Some(node) = spec.containers.iter().find(|c| c.name == NODE) else {
        return;
    };
    let script = format!(
        "command -v getent >/dev/null || exit 0; i=0; \
until getent hosts {fqdn}. >/dev/null; do i=$((i+1)); \
if [ $i -ge 300 ]; then echo \"{fqdn} did not resolve within 60s\"; exit 0; fi; sleep 0.2; done"
    );
    let init = init_container(node, DNS_INIT, script);
    spec.init_containers.get_or_insert_default().push(init);
}

/// An init container running `script` with `/bin/sh` in the `node` container's image, as its
/// user: what it finds out holds for the main container too.
fn init_container(node: &Container, name: &str, script: String) -> Container {
    Container {
        name: name.into(),
        image: node.image.clone(),
        image_pull_policy: node.image_pull_policy.clone(),
        security_context: node.security_context.clone(),
        resources: quota_resources(node.resources.as_ref()),
        command: Some(vec!["/bin/sh".into(), "-c".into(), script]),
        ..Default::default()
    }
}

/// An init container (the `node` image, as the same user, with the same SSH files) that waits
/// until SSH reaches every worker, which is exactly what mpirun needs next:
/// - a launcher in the workers' gang is created with them, before their sshd runs;
/// - behind a NetworkPolicy, the network plugin admits a new pod's address a moment after it
///   starts (kube-router on a busy node: more than the 10 s ssh's own retries cover), and mpirun
///   would fail on the first refused connection.
///
/// It waits at most `seconds` per run; an answer from sshd, even a refusal of the key, ends the
/// wait (mpirun then reports what is wrong), as does an image without `ssh`.
fn wait_for_workers(spec: &mut PodSpec, plan: &Plan, job: &str, copy: bool, seconds: u32) {
    let Some(node) = spec.containers.iter().find(|c| c.name == NODE) else {
        return;
    };
    let workers: Vec<String> = plan
        .jobs
        .iter()
        .filter(|j| j.role == Role::Node)
        .flat_map(|j| {
            j.indices()
                .map(|at| names::pod(job, &j.name, at.job_index, at.index))
        })
        .collect();
    let script = format!(
        "command -v ssh >/dev/null || exit 0; end=$(( $(date +%s) + {seconds} )); \
for host in {hosts}; do \
until out=$(ssh -o BatchMode=yes -o ConnectTimeout=5 {SSH_ARGS} \"$host\" true 2>&1); do \
case \"$out\" in *'Permission denied'*|*'Host key verification failed'*) break;; esac; \
if [ $(date +%s) -ge $end ]; then echo \"$host: no SSH session within {seconds}s: $out\"; exit 0; fi; \
sleep 1; done; done",
        hosts = workers.join(" "),
        SSH_ARGS = mpi::SSH_ARGS,
    );
    let mut init = init_container(node, WORKERS_INIT, script);
    init.volume_mounts = Some(vec![VolumeMount {
        name: (if copy { SSH_COPY_VOLUME } else { SSH_VOLUME }).into(),
        mount_path: plan.ssh_mount_path.clone(),
        read_only: Some(true),
        ..Default::default()
    }]);
    spec.init_containers.get_or_insert_default().push(init);
}

/// The `node` container's CPU and memory, so that a ResourceQuota demanding limits admits the
/// init container; the pod's effective request stays the same. Devices (GPUs) stay out.
fn quota_resources(from: Option<&ResourceRequirements>) -> Option<ResourceRequirements> {
    let from = from?;
    let pick = |m: &Option<BTreeMap<String, Quantity>>| {
        m.as_ref()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| matches!(k.as_str(), "cpu" | "memory"))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<BTreeMap<_, _>>()
            })
            .filter(|m| !m.is_empty())
    };
    Some(ResourceRequirements {
        limits: pick(&from.limits),
        requests: pick(&from.requests),
        ..Default::default()
    })
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
