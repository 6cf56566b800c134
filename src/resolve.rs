//! Runtime resolution: a TrainJob plus the runtime it references become a [`Plan`], the complete
//! description of what to run. Pure: no client, so every rule here is unit-tested.
//!
//! Order of application, as upstream: the runtime template, then `spec.trainer` (and
//! `spec.initializer`) overrides, then `spec.runtimePatches` in list order.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, PodSpec, PodTemplateSpec, ResourceRequirements, SecretEnvSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::{
    ANCESTOR_DATASET_INITIALIZER, ANCESTOR_LABEL, ANCESTOR_MODEL_INITIALIZER, ANCESTOR_TRAINER, DependsOn,
    LAUNCHER, MPIImplementation, NODE, PodGroupPolicy, PodSpecPatch, RuntimePatch, TrainJob,
    TrainingRuntimeSpec,
};
use crate::env::RESERVED_ENV;

/// Why a job cannot be planned. Each message names the field at fault and what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error(
        "runtime {runtime} has no spec.mlPolicy.mpi: this operator runs MPI jobs; reference an MPI runtime such as mpi-openmpi"
    )]
    NotMpi { runtime: String },
    #[error(
        "runtime {runtime} has no replicated job named \"launcher\" in spec.template.spec.replicatedJobs: add one whose container \"node\" runs mpirun"
    )]
    NoLauncher { runtime: String },
    #[error(
        "runtime {runtime} has no replicated job named \"node\" but the job needs {workers} worker(s): add a \"node\" replicated job running sshd, or set spec.trainer.numNodes to 1 with runLauncherAsNode"
    )]
    NoWorkers { runtime: String, workers: i32 },
    #[error(
        "runtime {runtime}: replicated job \"{job}\" has no container named \"{container}\"; MPI needs it to mount the SSH keys and hostfile"
    )]
    MissingContainer {
        runtime: String,
        job: String,
        container: String,
    },
    #[error(
        "runtime {runtime}: replicated job \"{job}\" depends on \"{dependency}\", which is not an earlier replicated job"
    )]
    BadDependency {
        runtime: String,
        job: String,
        dependency: String,
    },
    #[error(
        "spec.trainer.env sets {names:?}, which the operator sets for MPI; remove them (use spec.trainer.numProcPerNode for slots)"
    )]
    ReservedEnv { names: Vec<String> },
    #[error(
        "spec.runtimePatches[manager={manager}]: replicated job \"{job}\" does not exist in runtime {runtime}"
    )]
    PatchUnknownJob {
        manager: String,
        job: String,
        runtime: String,
    },
    #[error(
        "spec.runtimePatches[manager={manager}]: replicated job \"{job}\" has no container \"{container}\" in runtime {runtime}"
    )]
    PatchUnknownContainer {
        manager: String,
        job: String,
        container: String,
        runtime: String,
    },
    #[error(
        "spec.runtimePatches[manager={manager}]: env cannot be patched on container \"{container}\"; set it in spec.trainer.env or spec.initializer instead"
    )]
    PatchEnvOnStepContainer { manager: String, container: String },
}

impl ResolveError {
    /// The `Failed` condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::NotMpi { .. } => "TrainingRuntimeNotSupported",
            ResolveError::ReservedEnv { .. }
            | ResolveError::PatchUnknownJob { .. }
            | ResolveError::PatchUnknownContainer { .. }
            | ResolveError::PatchEnvOnStepContainer { .. } => "InvalidSpec",
            _ => "InvalidRuntime",
        }
    }
}

/// What a replicated job is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Runs `mpirun`.
    Launcher,
    /// MPI workers running sshd.
    Node,
    /// Any other step (initializers), run as plain pods.
    Other,
}

/// One replicated job, ready to be realised as `replicas × parallelism` pods.
#[derive(Clone, Debug, PartialEq)]
pub struct JobPlan {
    /// Replicated job name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Number of Jobs (JobSet semantics).
    pub replicas: i32,
    /// Pods per Job.
    pub parallelism: i32,
    /// The pod template after overrides and patches.
    pub template: PodTemplateSpec,
    /// Earlier replicated jobs that must reach a status first.
    pub depends_on: Vec<DependsOn>,
}

impl JobPlan {
    /// Total pods of this replicated job.
    pub fn pods(&self) -> i32 {
        self.replicas * self.parallelism
    }
}

/// Everything needed to build a job's objects.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// MPI implementation (decides hostfile format and environment).
    pub implementation: MPIImplementation,
    /// MPI slots per node.
    pub slots: i32,
    /// Number of MPI hosts (workers, plus the launcher when it runs ranks).
    pub num_nodes: i32,
    /// Where the SSH Secret is mounted.
    pub ssh_mount_path: String,
    /// Whether the launcher is also an MPI host.
    pub launcher_as_node: bool,
    /// Subdomain of the pods (the headless Service name).
    pub subdomain: String,
    /// Whether DNS records exist before pods are ready.
    pub publish_not_ready: bool,
    /// Whole-gang restarts allowed before the job fails.
    pub max_restarts: i32,
    /// Replicated jobs in runtime order.
    pub jobs: Vec<JobPlan>,
    /// Gang scheduling policy of the runtime.
    pub gang: Option<PodGroupPolicy>,
}

impl Plan {
    /// The MPI hosts in hostfile order: `(replicated job, job index, pod index)`.
    pub fn hosts(&self) -> impl Iterator<Item = (&str, i32, i32)> {
        self.jobs
            .iter()
            .filter(|j| j.role == Role::Node || (j.role == Role::Launcher && self.launcher_as_node))
            .flat_map(|j| {
                (0..j.replicas).flat_map(move |r| (0..j.parallelism).map(move |i| (j.name.as_str(), r, i)))
            })
    }

    /// The replicated job with `role`.
    pub fn job(&self, role: Role) -> Option<&JobPlan> {
        self.jobs.iter().find(|j| j.role == role)
    }

    /// Total pods of the job.
    pub fn total_pods(&self) -> i32 {
        self.jobs.iter().map(JobPlan::pods).sum()
    }
}

/// Resolves `job` against `runtime` (named `runtime_name` in messages, e.g. `ClusterTrainingRuntime/mpi-openmpi`).
pub fn resolve(
    job: &TrainJob,
    runtime_name: &str,
    runtime: &TrainingRuntimeSpec,
) -> Result<Plan, ResolveError> {
    let rt = || runtime_name.to_string();
    let policy = runtime.ml_policy.as_ref();
    let mpi = policy
        .and_then(|p| p.mpi.as_ref())
        .ok_or_else(|| ResolveError::NotMpi { runtime: rt() })?;
    let trainer = job.spec.trainer.clone().unwrap_or_default();

    let reserved: Vec<String> = trainer
        .env
        .iter()
        .filter(|e| RESERVED_ENV.contains(&e.name.as_str()))
        .map(|e| e.name.clone())
        .collect();
    if !reserved.is_empty() {
        return Err(ResolveError::ReservedEnv { names: reserved });
    }

    let spec = runtime.template.spec.clone().unwrap_or_default();
    let num_nodes = trainer
        .num_nodes
        .or(policy.and_then(|p| p.num_nodes))
        .unwrap_or(1)
        .max(1);
    let launcher_as_node = mpi.run_launcher_as_node.unwrap_or(false);
    // With the launcher as a host, numNodes counts it: numNodes 1 is the launcher alone
    // (upstream makes a needless extra worker, kubeflow/trainer#3954).
    let workers = if launcher_as_node {
        num_nodes - 1
    } else {
        num_nodes
    };

    let trainer_job = spec
        .replicated_jobs
        .iter()
        .find(|j| {
            let labels = j.template.metadata.as_ref().and_then(|m| m.labels.as_ref());
            labels.and_then(|l| l.get(ANCESTOR_LABEL)).map(String::as_str) == Some(ANCESTOR_TRAINER)
        })
        .map(|j| j.name.clone())
        .unwrap_or_else(|| LAUNCHER.to_string());

    let mut jobs = Vec::with_capacity(spec.replicated_jobs.len());
    for (position, rjob) in spec.replicated_jobs.iter().enumerate() {
        let role = match rjob.name.as_str() {
            LAUNCHER => Role::Launcher,
            NODE => Role::Node,
            _ => Role::Other,
        };
        for dep in &rjob.depends_on {
            if !spec.replicated_jobs[..position]
                .iter()
                .any(|j| j.name == dep.name)
            {
                return Err(ResolveError::BadDependency {
                    runtime: rt(),
                    job: rjob.name.clone(),
                    dependency: dep.name.clone(),
                });
            }
        }
        let job_spec = rjob.template.spec.clone().unwrap_or_default();
        let mut template = job_spec.template;
        // Labels on the Job template describe the step (ancestor label); keep them on the pods.
        let job_labels = rjob
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        template
            .metadata
            .get_or_insert_default()
            .labels
            .get_or_insert_default()
            .extend(job_labels.clone());
        let (replicas, parallelism) = match role {
            Role::Launcher => (1, 1),
            Role::Node => (1, workers),
            Role::Other => (
                rjob.replicas.unwrap_or(1).max(0),
                job_spec.parallelism.unwrap_or(1).max(0),
            ),
        };
        if role != Role::Other {
            require_container(&template, NODE, runtime_name, &rjob.name)?;
        }
        let step = job_labels.get(ANCESTOR_LABEL).map(String::as_str);
        let pod = template.spec.get_or_insert_default();
        if role != Role::Other {
            apply_trainer(
                pod,
                &trainer,
                rjob.name == trainer_job,
                role == Role::Node || launcher_as_node,
            );
        }
        apply_initializer(pod, job, step);
        jobs.push(JobPlan {
            name: rjob.name.clone(),
            role,
            replicas,
            parallelism,
            template,
            depends_on: rjob.depends_on.clone(),
        });
    }
    if !jobs.iter().any(|j| j.role == Role::Launcher) {
        return Err(ResolveError::NoLauncher { runtime: rt() });
    }
    if workers > 0 && !jobs.iter().any(|j| j.role == Role::Node) {
        return Err(ResolveError::NoWorkers {
            runtime: rt(),
            workers,
        });
    }
    for patch in &job.spec.runtime_patches {
        apply_patch(&mut jobs, patch, runtime_name)?;
    }

    let slots = trainer.num_proc_per_node.unwrap_or_else(|| {
        let runtime_slots = mpi.num_proc_per_node.unwrap_or(1);
        // As upstream: a runtime default of 1 follows the GPUs per node when there are several.
        let gpus = trainer
            .resources_per_node
            .as_ref()
            .and_then(gpu_count)
            .or_else(|| {
                jobs.iter()
                    .find(|j| j.role == Role::Node)
                    .and_then(|j| node_container_gpus(&j.template))
            });
        match gpus {
            Some(g) if runtime_slots == 1 && g > 1 => g,
            _ => runtime_slots,
        }
    });
    let network = spec.network.as_ref();
    Ok(Plan {
        implementation: mpi.mpi_implementation.unwrap_or_default(),
        slots,
        num_nodes,
        ssh_mount_path: mpi
            .ssh_auth_mount_path
            .clone()
            .unwrap_or_else(|| "/root/.ssh".into()),
        launcher_as_node,
        subdomain: network
            .and_then(|n| n.subdomain.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| job.metadata.name.clone().unwrap_or_default()),
        publish_not_ready: network
            .and_then(|n| n.publish_not_ready_addresses)
            .unwrap_or(true),
        max_restarts: spec
            .failure_policy
            .as_ref()
            .and_then(|f| f.max_restarts)
            .unwrap_or(0)
            .max(0),
        jobs,
        gang: runtime.pod_group_policy.clone(),
    })
}

fn require_container(
    template: &PodTemplateSpec,
    name: &str,
    runtime: &str,
    job: &str,
) -> Result<(), ResolveError> {
    let found = template
        .spec
        .as_ref()
        .is_some_and(|s| s.containers.iter().any(|c| c.name == name));
    if found {
        Ok(())
    } else {
        Err(ResolveError::MissingContainer {
            runtime: runtime.into(),
            job: job.into(),
            container: name.into(),
        })
    }
}

/// `spec.trainer` on one MPI pod: image and env on every `node` container (workers need the same
/// program and environment as the launcher, kubeflow/trainer#2825 and #3427), command and args on
/// the trainer step only, resources on every MPI host.
fn apply_trainer(pod: &mut PodSpec, trainer: &crate::api::Trainer, is_trainer_step: bool, is_host: bool) {
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
fn apply_initializer(pod: &mut PodSpec, job: &TrainJob, step: Option<&str>) {
    let Some(init) = &job.spec.initializer else { return };
    let (uri, env, secret) = match step {
        Some(ANCESTOR_DATASET_INITIALIZER) => match &init.dataset {
            Some(d) => (&d.storage_uri, &d.env, &d.secret_ref),
            None => return,
        },
        Some(ANCESTOR_MODEL_INITIALIZER) => match &init.model {
            Some(m) => (&m.storage_uri, &m.env, &m.secret_ref),
            None => return,
        },
        _ => return,
    };
    let container = step.unwrap_or_default();
    for c in pod.containers.iter_mut().filter(|c| c.name == container) {
        if let Some(uri) = uri {
            upsert_env(
                c,
                &[EnvVar {
                    name: "STORAGE_URI".into(),
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

fn apply_patch(jobs: &mut [JobPlan], patch: &RuntimePatch, runtime: &str) -> Result<(), ResolveError> {
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

/// Replaces the item with the same key, or appends it.
fn upsert_by<T, K: PartialEq + ?Sized>(items: &mut Vec<T>, item: T, key: impl Fn(&T) -> &K) {
    match items.iter_mut().find(|existing| key(existing) == key(&item)) {
        Some(existing) => *existing = item,
        None => items.push(item),
    }
}

/// Upserts `env` into the container's environment, by name.
pub fn upsert_env(container: &mut Container, env: &[EnvVar]) {
    if env.is_empty() {
        return;
    }
    let target = container.env.get_or_insert_default();
    for var in env {
        upsert_by(target, var.clone(), |v| v.name.as_str());
    }
}

fn merge_resources(target: &mut ResourceRequirements, from: &ResourceRequirements) {
    for (into, src) in [
        (&mut target.limits, &from.limits),
        (&mut target.requests, &from.requests),
    ] {
        if let Some(src) = src {
            into.get_or_insert_default().extend(src.clone());
        }
    }
}

fn gpu_count(resources: &ResourceRequirements) -> Option<i32> {
    let find = |m: &Option<BTreeMap<String, Quantity>>| {
        m.as_ref()?
            .iter()
            .find(|(k, _)| k.contains("gpu"))
            .and_then(|(_, q)| q.0.parse::<i32>().ok())
    };
    find(&resources.requests).or_else(|| find(&resources.limits))
}

fn node_container_gpus(template: &PodTemplateSpec) -> Option<i32> {
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

#[cfg(test)]
mod tests;
