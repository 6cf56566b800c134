//! `TrainJob`: one training run, pointing at a runtime and overriding parts of it.

use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::RuntimePatch;

/// Specification of the desired TrainJob.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "trainer.kubeflow.org",
    version = "v1alpha1",
    kind = "TrainJob",
    doc = "A training job: runs the referenced training runtime with the overrides in its spec.",
    namespaced,
    status = "TrainJobStatus",
    shortname = "tj",
    category = "kubeflow",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.conditions[-1:].type"}"#,
    printcolumn = r#"{"name":"Runtime","type":"string","jsonPath":".spec.runtimeRef.name"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".spec.trainer.numNodes"}"#,
    printcolumn = r#"{"name":"Progress %","type":"integer","jsonPath":".status.trainerStatus.progressPercentage","description":"How far training got, as its code reports it"}"#,
    printcolumn = r#"{"name":"Seconds Left","type":"integer","jsonPath":".status.trainerStatus.estimatedRemainingSeconds","description":"Training time left, as its code estimates it"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must match RFC 1035 DNS label format"),
    validation = Rule::new("size(self.metadata.name) <= 63")
        .message("metadata.name must be no more than 63 characters")
)]
#[cfg_attr(test, kube(cel))]
#[serde(rename_all = "camelCase")]
pub struct TrainJobSpec {
    /// Reference to the TrainingRuntime or ClusterTrainingRuntime this job runs on.
    #[x_kube(validation = Rule::new("self == oldSelf").message("field is immutable"))]
    pub runtime_ref: RuntimeRef,

    /// Configuration of the dataset and model initializers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("field is immutable"))]
    pub initializer: Option<Initializer>,

    /// Overrides for the trainer step (the replicated job labelled
    /// `trainer.kubeflow.org/trainjob-ancestor-step: trainer`, container `node`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("field is immutable"))]
    pub trainer: Option<Trainer>,

    /// Patches to the runtime template, one entry per manager (for example Kueue), applied in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["manager".into()]))]
    pub runtime_patches: Vec<RuntimePatch>,

    /// Whether the job is suspended: no pods run while true.
    #[serde(default = "default_false", skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,

    /// Seconds the job may be active (counted from creation or the last resume) before it fails
    /// with reason DeadlineExceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("field is immutable"))]
    pub active_deadline_seconds: Option<i64>,

    /// Controller that reconciles this job: `trainer.kubeflow.org/trainjob-controller` (this
    /// operator) or `kueue.x-k8s.io/multikueue`.
    #[serde(default = "default_managed_by", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(
        validation = Rule::new("self in ['trainer.kubeflow.org/trainjob-controller', 'kueue.x-k8s.io/multikueue']")
            .message("ManagedBy must be trainer.kubeflow.org/trainjob-controller or kueue.x-k8s.io/multikueue if set"),
        validation = Rule::new("self == oldSelf").message("field is immutable")
    )]
    pub managed_by: Option<String>,
}

fn default_false() -> Option<bool> {
    Some(false)
}

fn default_managed_by() -> Option<String> {
    Some(super::MANAGED_BY_TRAINER.to_string())
}

/// Reference to a training runtime.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeRef {
    /// Name of the runtime. A namespaced TrainingRuntime must be in the job's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// API group of the runtime. Defaults to `trainer.kubeflow.org`.
    #[serde(default = "default_api_group", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub api_group: Option<String>,

    /// Kind of the runtime: `ClusterTrainingRuntime` (default) or `TrainingRuntime`.
    #[serde(default = "default_runtime_kind", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub kind: Option<String>,
}

fn default_api_group() -> Option<String> {
    Some(super::GROUP.to_string())
}

fn default_runtime_kind() -> Option<String> {
    Some("ClusterTrainingRuntime".to_string())
}

/// Dataset and model initialization.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Initializer {
    /// Dataset initialization and pre-processing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<StorageInitializer>,
    /// Pre-trained model initialization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<StorageInitializer>,
}

impl TrainJob {
    /// Drops what no reader here needs and the API server keeps on every copy: the managed
    /// fields and kubectl's copy of the manifest (as large as the rest of a new job).
    pub fn drop_bookkeeping(&mut self) {
        self.metadata.managed_fields = None;
        if let Some(annotations) = self.metadata.annotations.as_mut() {
            annotations.remove(crate::names::LAST_APPLIED_ANNOTATION);
        }
    }
}

impl Initializer {
    /// The settings for the step with ancestor label `step` (`dataset-initializer` or
    /// `model-initializer`).
    pub fn for_step(&self, step: &str) -> Option<&StorageInitializer> {
        match step {
            super::ANCESTOR_DATASET_INITIALIZER => self.dataset.as_ref(),
            super::ANCESTOR_MODEL_INITIALIZER => self.model.as_ref(),
            _ => None,
        }
    }
}

/// Overrides for an initializer step (`dataset-initializer` or `model-initializer`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageInitializer {
    /// URI to download from, for example `hf://org/name` or `s3://bucket/path`; passed to the
    /// initializer as `STORAGE_URI`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(
        validation = Rule::new("self == '' || self.matches('^[A-Za-z][A-Za-z0-9+.-]*://.+$')")
            .message("storageUri must be a URI with a scheme, for example s3://bucket/path or hf://org/name")
    )]
    pub storage_uri: Option<String>,
    /// Environment of the initializer container, merged into the runtime's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,
    /// Secret in the job's namespace with credentials for the download.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
}

/// Overrides for the trainer step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Trainer {
    /// Container image of the training container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 500))]
    pub image: Option<String>,

    /// Entrypoint of the training container (for MPI: the `mpirun` command line).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub command: Vec<String>,

    /// Arguments of the entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub args: Vec<String>,

    /// Environment of the training container, merged into the runtime's, on every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub env: Vec<EnvVar>,

    /// Number of training nodes (MPI hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message(
        "numNodes must be at least 1: set spec.trainer.numNodes to the number of MPI hosts you want"
    ))]
    pub num_nodes: Option<i32>,

    /// Compute resources of each training node, merged into the runtime's containers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources_per_node: Option<ResourceRequirements>,

    /// Processes (MPI slots) per node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message(
        "numProcPerNode must be at least 1: set spec.trainer.numProcPerNode to the MPI slots per node"
    ))]
    pub num_proc_per_node: Option<i32>,
}

/// Observed state of a TrainJob.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrainJobStatus {
    /// Conditions `Suspended`, `Complete` and `Failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Counts per replicated job, as JobSet reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub jobs_status: Vec<JobStatus>,

    /// Progress reported by the trainer (alpha upstream; kept for schema compatibility).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainer_status: Option<TrainerStatus>,

    /// Whole-gang restarts so far, bounded by the runtime's `failurePolicy.maxRestarts`
    /// (trainjob-operator extension; upstream keeps this in the JobSet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub restarts: Option<i32>,
}

/// Pod counts of one replicated job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// Name of the replicated job.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Child jobs whose pods are all ready or completed.
    #[schemars(range(min = 0))]
    pub ready: i32,
    /// Child jobs that completed successfully.
    #[schemars(range(min = 0))]
    pub succeeded: i32,
    /// Child jobs that failed.
    #[schemars(range(min = 0))]
    pub failed: i32,
    /// Child jobs with at least one pending or running pod.
    #[schemars(range(min = 0))]
    pub active: i32,
    /// Child jobs that are suspended.
    #[schemars(range(min = 0))]
    pub suspended: i32,
}

/// Progress of the trainer step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.lastUpdatedTime)").message("lastUpdatedTime is required when trainerStatus is present"))]
pub struct TrainerStatus {
    /// Estimated completion in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub progress_percentage: Option<i32>,
    /// Estimated remaining seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub estimated_remaining_seconds: Option<i32>,
    /// Current model metrics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub metrics: Vec<Metric>,
    /// When this status was observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_time: Option<Time>,
}

/// One named metric value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Metric {
    /// Metric name, for example `loss`.
    #[schemars(length(min = 1, max = 64))]
    pub name: String,
    /// Metric value as a string.
    #[schemars(length(min = 1, max = 64))]
    pub value: String,
}
