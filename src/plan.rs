//! The bottom layer: a resolved job as plain data. `resolve` produces a [`Plan`]; the
//! `lifecycle` and the builders (`build`) read it, and nothing here depends on them. The rules
//! that follow from the plan alone (who is in the gang, the MPI implementation) are methods here,
//! so that deciding and building cannot disagree on them.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PodTemplateSpec};

use crate::api::{DependsOn, LAUNCHER, MPIImplementation, NODE, PodGroupPolicy};

/// The DNS domain of a cluster that does not say otherwise.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// What the operator's settings say about the cluster, which every plan carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// The cluster's DNS domain (kubelet `--cluster-domain`), for the pods' search path.
    pub domain: String,
    /// Whether every job gets a NetworkPolicy that admits only its own pods.
    pub network_policies: bool,
    /// How long a job may stay stalled by an image that cannot be pulled, a container that
    /// cannot be created or one that keeps crashing before it fails; zero: never.
    pub stall_timeout: Duration,
    /// Where the job's pods report their progress; `None` when the status server is off (or has
    /// no certificate yet).
    pub reporting: Option<Reporting>,
}

/// The status server as a job's pods reach it (`progress`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reporting {
    /// Its URL, without the job's path.
    pub url: String,
    /// The CA bundle its certificate chains to (PEM).
    pub ca: String,
}

/// How long a stalled job waits before it fails, unless the settings say otherwise.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            domain: DEFAULT_CLUSTER_DOMAIN.into(),
            network_policies: false,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            reporting: None,
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

impl Role {
    /// The role of the replicated job called `name`.
    pub fn of(name: &str) -> Role {
        match name {
            LAUNCHER => Role::Launcher,
            NODE => Role::Node,
            _ => Role::Other,
        }
    }
}

/// Identifies one pod of a replicated job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodIndex {
    /// Index of the Job within the replicated job (label `jobset.sigs.k8s.io/job-index`).
    pub job_index: i32,
    /// Index of the pod within its Job (label `batch.kubernetes.io/job-completion-index`).
    pub index: i32,
}

/// One replicated job, realised as `replicas × parallelism` pods.
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
    /// Total pods of this replicated job. Widened so that no user-supplied size can overflow.
    pub fn pods(&self) -> i64 {
        i64::from(self.replicas.max(0)) * i64::from(self.parallelism.max(0))
    }

    /// Every pod index, Job by Job.
    pub fn indices(&self) -> impl Iterator<Item = PodIndex> + '_ {
        (0..self.replicas)
            .flat_map(move |job_index| (0..self.parallelism).map(move |index| PodIndex { job_index, index }))
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
    /// What the operator's settings say about the cluster.
    pub cluster: Cluster,
    /// Whether DNS records exist before pods are ready.
    pub publish_not_ready: bool,
    /// Whole-gang restarts allowed before the job fails.
    pub max_restarts: i32,
    /// Replicated jobs in runtime order.
    pub jobs: Vec<JobPlan>,
    /// Gang scheduling policy of the runtime.
    pub gang: Option<PodGroupPolicy>,
    /// The Volcano queue: annotation `scheduling.volcano.sh/queue-name` of the runtime's
    /// template, or of a runtime patch's template (the last one wins), as upstream reads it.
    pub volcano_queue: Option<String>,
    /// The job's volume claims, from the runtime's `volumeClaimPolicies`.
    pub claims: Vec<Claim>,
}

/// A PersistentVolumeClaim the job makes from a template of the runtime's
/// `volumeClaimPolicies`, shared by every pod that mounts a volume of the template's name.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    /// `<template name>-<job name>`, as JobSet names it.
    pub name: String,
    /// The runtime's template.
    pub template: PersistentVolumeClaim,
    /// `retentionPolicy.whenDeleted: Retain`: the claim outlives the job (not owned by it).
    pub retain: bool,
}

impl Plan {
    /// The MPI hosts in hostfile order: `(replicated job, job index, pod index)`. A launcher that
    /// runs ranks comes first, so that rank 0 is on it with every implementation (Open MPI puts
    /// its own host first whatever the order; Hydra follows the file), as in MPI Operator.
    pub fn hosts(&self) -> impl Iterator<Item = (&str, i32, i32)> {
        let launcher = self
            .jobs
            .iter()
            .filter(|j| j.role == Role::Launcher && self.launcher_as_node);
        let workers = self.jobs.iter().filter(|j| j.role == Role::Node);
        launcher.chain(workers).flat_map(|j| {
            j.indices()
                .map(move |at| (j.name.as_str(), at.job_index, at.index))
        })
    }

    /// The replicated job with `role`.
    pub fn job(&self, role: Role) -> Option<&JobPlan> {
        self.jobs.iter().find(|j| j.role == role)
    }

    /// The replicated job called `name`.
    pub fn job_named(&self, name: &str) -> Option<&JobPlan> {
        self.jobs.iter().find(|j| j.name == name)
    }

    /// Name of the launcher's replicated job.
    pub fn launcher(&self) -> &str {
        self.job(Role::Launcher)
            .map(|j| j.name.as_str())
            .unwrap_or(LAUNCHER)
    }

    /// The MPI implementation's specifics.
    pub fn mpi(&self) -> &'static dyn crate::mpi::Implementation {
        crate::mpi::of(self.implementation)
    }

    /// Total pods of the job, saturating rather than overflowing.
    pub fn total_pods(&self) -> i64 {
        self.jobs.iter().map(JobPlan::pods).fold(0, i64::saturating_add)
    }

    /// Whether pods of `role` belong to the job's gang (when it has one): the MPI hosts, that
    /// is the workers, and the launcher when it runs ranks. A launcher that cannot be placed
    /// would leave the workers holding their nodes for nothing.
    pub fn gang_member(&self, role: Role) -> bool {
        match role {
            Role::Node => true,
            Role::Launcher => self.launcher_as_node,
            Role::Other => false,
        }
    }

    /// The number of gang members, when there is more than one.
    pub fn gang_size(&self) -> Option<i32> {
        let members: i64 = self
            .jobs
            .iter()
            .filter(|j| self.gang_member(j.role))
            .map(JobPlan::pods)
            .sum();
        i32::try_from(members).ok().filter(|n| *n > 1)
    }

    /// Whether the runtime asks for any gang policy.
    pub fn has_gang_policy(&self) -> bool {
        self.gang
            .as_ref()
            .is_some_and(|g| g.workload.is_some() || g.coscheduling.is_some() || g.volcano.is_some())
    }

    /// How many pods must be bound together, when the runtime asks for a native gang
    /// (`podGroupPolicy.workload`) and there is more than one MPI host.
    pub fn native_gang(&self) -> Option<i32> {
        self.gang.as_ref().and_then(|g| g.workload.as_ref())?;
        self.gang_size()
    }

    /// Whether the launcher is created with the workers, as a member of their gang (a gang
    /// forms only once all its members exist); it then waits for their sshd itself.
    pub fn launcher_in_gang(&self) -> bool {
        self.gang_member(Role::Launcher) && self.has_gang_policy() && self.gang_size().is_some()
    }
}
