//! Runtime resolution: a TrainJob plus the runtime it references become a [`Plan`], the complete
//! description of what to run. Pure: no client, so every rule here is unit-tested.
//!
//! Order of application, as upstream: the runtime template, then `spec.trainer` (and
//! `spec.initializer`) overrides, then `spec.runtimePatches` in list order.

mod claims;
mod overrides;

use k8s_openapi::api::core::v1::PodTemplateSpec;

use crate::api::{ANCESTOR_LABEL, ANCESTOR_TRAINER, LAUNCHER, NODE, TrainJob, TrainingRuntimeSpec};
use crate::desired::gang::VOLCANO_QUEUE_ANNOTATION;
use crate::plan::{Cluster, JobPlan, Plan, Role};
use crate::reasons;
use overrides::{apply_initializer, apply_patch, apply_trainer, gpu_count, node_container_gpus};

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
    #[error("runtime {runtime}: {at}: {problem}")]
    BadClaimTemplate {
        runtime: String,
        at: String,
        problem: String,
    },
}

impl ResolveError {
    /// Stable label for the error metric.
    pub fn label(&self) -> &'static str {
        match self {
            ResolveError::NotMpi { .. } => "runtime_not_mpi",
            ResolveError::NoLauncher { .. } => "runtime_no_launcher",
            ResolveError::NoWorkers { .. } => "runtime_no_workers",
            ResolveError::MissingContainer { .. } => "runtime_missing_container",
            ResolveError::BadDependency { .. } => "runtime_bad_dependency",
            ResolveError::ReservedEnv { .. } => "reserved_env",
            ResolveError::PatchUnknownJob { .. } => "patch_unknown_job",
            ResolveError::PatchUnknownContainer { .. } => "patch_unknown_container",
            ResolveError::PatchEnvOnStepContainer { .. } => "patch_env_on_step_container",
            ResolveError::BadClaimTemplate { .. } => "runtime_bad_claim_template",
        }
    }

    /// The `Failed` condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::NotMpi { .. } => reasons::RUNTIME_NOT_SUPPORTED,
            ResolveError::ReservedEnv { .. }
            | ResolveError::PatchUnknownJob { .. }
            | ResolveError::PatchUnknownContainer { .. }
            | ResolveError::PatchEnvOnStepContainer { .. } => reasons::INVALID_SPEC,
            ResolveError::NoLauncher { .. }
            | ResolveError::NoWorkers { .. }
            | ResolveError::MissingContainer { .. }
            | ResolveError::BadDependency { .. }
            | ResolveError::BadClaimTemplate { .. } => reasons::INVALID_RUNTIME,
        }
    }
}

/// A runtime as a job sees it: fetched, or frozen in the job's snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Runtime {
    /// `Kind/name`, as messages and the snapshot name it.
    pub label: String,
    /// Its spec.
    pub spec: TrainingRuntimeSpec,
    /// Whether it carries `trainer.kubeflow.org/support: deprecated` (admission warns).
    pub deprecated: bool,
}

impl Runtime {
    /// A runtime that is not deprecated.
    pub fn new(label: impl Into<String>, spec: TrainingRuntimeSpec) -> Runtime {
        Runtime {
            label: label.into(),
            spec,
            deprecated: false,
        }
    }
}

/// Resolves `job` against `runtime`, in `cluster`.
pub fn resolve(job: &TrainJob, runtime: &Runtime, cluster: &Cluster) -> Result<Plan, ResolveError> {
    let (runtime_name, runtime) = (runtime.label.as_str(), &runtime.spec);
    let rt = || runtime_name.to_string();
    let policy = runtime.ml_policy.as_ref();
    let mpi = policy
        .and_then(|p| p.mpi.as_ref())
        .ok_or_else(|| ResolveError::NotMpi { runtime: rt() })?;
    let trainer = job.spec.trainer.clone().unwrap_or_default();

    let reserved: Vec<String> = trainer
        .env
        .iter()
        .filter(|e| crate::mpi::is_reserved(&e.name))
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
        let role = Role::of(&rjob.name);
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
    let job_name = job.metadata.name.as_deref().unwrap_or_default();
    let claims = claims::claims(runtime_name, job_name, &spec.volume_claim_policies, &mut jobs)?;

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
        subdomain: subdomain(job, runtime),
        cluster: cluster.clone(),
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
        volcano_queue: volcano_queue(job, runtime),
        claims,
    })
}

/// The Volcano queue named on the runtime's template or by a runtime patch (the last one wins).
fn volcano_queue(job: &TrainJob, runtime: &TrainingRuntimeSpec) -> Option<String> {
    let patched = job.spec.runtime_patches.iter().filter_map(|p| {
        let meta = p
            .training_runtime_spec
            .as_ref()?
            .template
            .as_ref()?
            .metadata
            .as_ref()?;
        meta.annotations.get(VOLCANO_QUEUE_ANNOTATION)
    });
    let own = runtime
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.get(VOLCANO_QUEUE_ANNOTATION));
    own.into_iter().chain(patched).last().cloned()
}

/// The pods' subdomain, which is also the headless Service's name: the runtime's
/// `network.subdomain`, else the job's name.
pub fn subdomain(job: &TrainJob, runtime: &TrainingRuntimeSpec) -> String {
    let network = runtime.template.spec.as_ref().and_then(|s| s.network.as_ref());
    network
        .and_then(|n| n.subdomain.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| job.metadata.name.clone().unwrap_or_default())
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

#[cfg(test)]
mod tests;
