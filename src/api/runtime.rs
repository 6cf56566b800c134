//! `TrainingRuntime` (namespaced) and `ClusterTrainingRuntime` (cluster-wide): reusable blueprints
//! that TrainJobs reference. Both share [`TrainingRuntimeSpec`].

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::JobSetTemplateSpec;

/// Specification of a training runtime.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "trainer.kubeflow.org",
    version = "v1alpha1",
    kind = "TrainingRuntime",
    doc = "A training runtime that TrainJobs in the same namespace can reference.",
    namespaced,
    category = "kubeflow",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[cfg_attr(test, kube(cel))]
#[serde(rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1))]
pub struct TrainingRuntimeSpec {
    /// ML-specific parameters (number of nodes, MPI settings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ml_policy: Option<MLPolicy>,

    /// Gang scheduling through a PodGroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_group_policy: Option<PodGroupPolicy>,

    /// Template of the replicated jobs (JobSet-shaped).
    #[serde(default)]
    pub template: JobSetTemplateSpec,
}

/// A training runtime available to TrainJobs in every namespace, installed by cluster admins.
///
/// Same spec as [`TrainingRuntime`]; kube's derive needs a distinct spec type per kind, so this
/// wrapper serialises transparently.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "trainer.kubeflow.org",
    version = "v1alpha1",
    kind = "ClusterTrainingRuntime",
    doc = "A training runtime that TrainJobs in every namespace can reference, installed by cluster admins.",
    category = "kubeflow",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(transparent)]
pub struct ClusterTrainingRuntimeSpec(pub TrainingRuntimeSpec);

impl std::ops::Deref for ClusterTrainingRuntimeSpec {
    type Target = TrainingRuntimeSpec;
    fn deref(&self) -> &TrainingRuntimeSpec {
        &self.0
    }
}

/// ML-specific parameters. At most one framework policy may be set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "[has(self.torch), has(self.mpi), has(self.jax), has(self.xgboost), has(self.flux)].filter(x, x).size() <= 1"
).message("Only one of the policy can be configured"))]
pub struct MLPolicy {
    /// Number of training nodes when the TrainJob does not say. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message(
        "numNodes must be at least 1: set spec.mlPolicy.numNodes to the default number of nodes"
    ))]
    pub num_nodes: Option<i32>,

    /// PyTorch (torchrun) policy. Accepted for compatibility; this operator runs MPI jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torch: Option<TorchMLPolicySource>,

    /// MPI policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mpi: Option<MPIMLPolicySource>,

    /// JAX policy. Accepted for compatibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jax: Option<EmptyPolicy>,

    /// XGBoost policy. Accepted for compatibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xgboost: Option<EmptyPolicy>,

    /// Flux policy. Accepted for compatibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flux: Option<FluxMLPolicySource>,
}

/// A policy without parameters.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct EmptyPolicy {}

/// PyTorch policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TorchMLPolicySource {
    /// Where torchrun environment variables are injected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_injection: Option<TorchEnvInjection>,
}

/// Targets of torchrun environment injection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TorchEnvInjection {
    /// Job and container names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TorchEnvTarget>,
}

/// One injection target.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TorchEnvTarget {
    /// Replicated job name.
    pub job_name: String,
    /// Container names.
    #[schemars(length(min = 1, max = 8))]
    pub container_names: Vec<String>,
}

/// Flux policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FluxMLPolicySource {
    /// Processes per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub num_proc_per_node: Option<i32>,
}

/// MPI policy: how the hostfile, SSH keys and launcher are set up.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MPIMLPolicySource {
    /// MPI slots per node (hostfile `slots=`). Defaults to 1.
    #[serde(
        default = "default_num_proc_per_node",
        skip_serializing_if = "Option::is_none"
    )]
    #[x_kube(validation = Rule::new("self >= 1").message("NumProcPerNode in mpiPolicy must be >= 1"))]
    pub num_proc_per_node: Option<i32>,

    /// MPI implementation: `OpenMPI` (4 and 5), `Intel` or `MPICH`. Defaults to OpenMPI.
    #[serde(
        default = "default_mpi_implementation",
        skip_serializing_if = "Option::is_none"
    )]
    pub mpi_implementation: Option<MPIImplementation>,

    /// Directory where the SSH key Secret is mounted. Defaults to `/root/.ssh`.
    #[serde(
        default = "default_ssh_auth_mount_path",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 4096))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message(
        "sshAuthMountPath must be an absolute path, for example /home/mpiuser/.ssh"
    ))]
    pub ssh_auth_mount_path: Option<String>,

    /// Whether the launcher also runs ranks (and is listed in the hostfile). Defaults to false.
    #[serde(default = "default_false", skip_serializing_if = "Option::is_none")]
    pub run_launcher_as_node: Option<bool>,
}

fn default_num_proc_per_node() -> Option<i32> {
    Some(1)
}

fn default_mpi_implementation() -> Option<MPIImplementation> {
    Some(MPIImplementation::OpenMPI)
}

fn default_ssh_auth_mount_path() -> Option<String> {
    Some("/root/.ssh".to_string())
}

fn default_false() -> Option<bool> {
    Some(false)
}

/// MPI implementation: `OpenMPI`, `Intel` or `MPICH`. It decides the hostfile format and the
/// environment of the launcher.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MPIImplementation {
    #[default]
    OpenMPI,
    Intel,
    #[serde(rename = "MPICH")]
    Mpich,
}

impl MPIImplementation {
    /// Every value, in the schema's order.
    pub const ALL: [MPIImplementation; 3] = [Self::OpenMPI, Self::Intel, Self::Mpich];
}

impl std::fmt::Display for MPIImplementation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::OpenMPI => "OpenMPI",
            Self::Intel => "Intel",
            Self::Mpich => "MPICH",
        })
    }
}

/// Gang scheduling policy; at most one plugin. The gang is the job's MPI hosts: every worker,
/// and the launcher too when it runs ranks (`runLauncherAsNode`); it is then created with the
/// workers and waits for their sshd in an init container (`mpi-wait-workers`). A launcher that
/// runs no ranks is created once the workers are Ready and stays out of the gang.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(validation = Rule::new("!(has(self.coscheduling) && has(self.volcano))")
    .message("Only one of coscheduling and volcano can be configured"))]
#[x_kube(validation = Rule::new("!(has(self.workload) && (has(self.coscheduling) || has(self.volcano)))")
    .message("Only one of coscheduling, volcano and workload can be configured"))]
pub struct PodGroupPolicy {
    /// scheduler-plugins coscheduling (`scheduling.x-k8s.io` PodGroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coscheduling: Option<CoschedulingPodGroupPolicySource>,
    /// Volcano (`scheduling.volcano.sh` PodGroup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volcano: Option<VolcanoPodGroupPolicySource>,
    /// Native Kubernetes gang scheduling (`scheduling.k8s.io/v1alpha2` Workload and PodGroup,
    /// KEP-4671), served by kube-scheduler itself when the cluster enables the `GenericWorkload`
    /// and `GangScheduling` feature gates. The shape Kubeflow Trainer's KEP-3015 proposes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadPodGroupPolicySource>,
}

/// Native gang scheduling settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadPodGroupPolicySource {
    /// Seconds the whole gang may wait to be scheduled before the job fails; unset waits for as
    /// long as it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub schedule_timeout_seconds: Option<i32>,
}

/// Coscheduling settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CoschedulingPodGroupPolicySource {
    /// Seconds to wait for the whole gang to be scheduled. Defaults to 60.
    #[serde(default = "default_schedule_timeout", skip_serializing_if = "Option::is_none")]
    pub schedule_timeout_seconds: Option<i32>,
}

fn default_schedule_timeout() -> Option<i32> {
    Some(60)
}

/// Volcano settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolcanoPodGroupPolicySource {
    /// Network topology constraints (Volcano HyperNodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_topology: Option<NetworkTopologySpec>,
}

/// Volcano network topology constraint.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkTopologySpec {
    /// `hard` or `soft`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Highest HyperNode tier the gang may span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub highest_tier_allowed: Option<i32>,
}
