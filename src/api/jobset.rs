//! The JobSet-shaped runtime template (`sigs.k8s.io/jobset` v1alpha2 `JobSetSpec`). The operator
//! realises it directly as pods; the shape is kept so upstream runtimes, Kueue and the SDK work.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::JobTemplateSpec;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Labels and annotations of the job as a whole (name and namespace are the TrainJob's).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct TemplateMetadata {
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Template of the JobSet a TrainJob expands to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct JobSetTemplateSpec {
    /// Labels and annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// The replicated jobs and their policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<JobSetSpec>,
}

/// JobSet spec: replicated jobs plus network, success, failure and startup policies.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!(has(self.startupPolicy) && self.startupPolicy.startupPolicyOrder == 'InOrder' && self.replicatedJobs.exists(x, has(x.dependsOn)))"
).message("StartupPolicy and DependsOn APIs are mutually exclusive"))]
pub struct JobSetSpec {
    /// The replicated jobs, in start order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub replicated_jobs: Vec<ReplicatedJob>,

    /// DNS options of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("Value is immutable"))]
    pub network: Option<Network>,

    /// When the job counts as succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("Value is immutable"))]
    pub success_policy: Option<SuccessPolicy>,

    /// When and how often the whole job is restarted before it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("Value is immutable"))]
    pub failure_policy: Option<FailurePolicy>,

    /// Start order of the replicated jobs (deprecated upstream in favour of `dependsOn`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("Value is immutable"))]
    pub startup_policy: Option<StartupPolicy>,

    /// Ignored: suspension is the TrainJob's `spec.suspend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,

    /// Which pod is the coordinator (accepted for compatibility).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<Coordinator>,

    /// Accepted for compatibility; the TrainJob's `spec.managedBy` decides who reconciles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,

    /// Accepted for compatibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// Shared PVCs (accepted for compatibility).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    #[x_kube(
        merge_strategy = ListMerge::Atomic,
        validation = Rule::new("self == oldSelf").message("Value is immutable")
    )]
    pub volume_claim_policies: Vec<VolumeClaimPolicy>,
}

/// One group of identical Jobs, realised as `replicas × parallelism` pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicatedJob {
    /// Name, used in pod names `<job>-<name>-<jobIndex>-<podIndex>`.
    pub name: String,

    /// Group of this replicated job.
    #[serde(default = "default_group_name", skip_serializing_if = "Option::is_none")]
    pub group_name: Option<String>,

    /// The Job template: pod template, parallelism and completions.
    pub template: JobTemplateSpec,

    /// Number of Jobs made from the template.
    #[serde(default = "default_replicas", skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Replicated jobs that must reach a status before this one starts (at most one upstream).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    #[x_kube(
        merge_strategy = ListMerge::Map(vec!["name".into()]),
        validation = Rule::new("self == oldSelf").message("Value is immutable")
    )]
    pub depends_on: Vec<DependsOn>,
}

fn default_group_name() -> Option<String> {
    Some("default".to_string())
}

fn default_replicas() -> Option<i32> {
    Some(1)
}

/// A start dependency on an earlier replicated job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct DependsOn {
    /// Name of the earlier replicated job.
    pub name: String,
    /// Status it must reach.
    pub status: DependsOnStatus,
}

/// Status a dependency must reach: `Ready` (every pod ready or finished) or `Complete`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DependsOnStatus {
    #[default]
    Ready,
    Complete,
}

/// DNS options of the pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// Make pods reachable by hostname (always on for MPI).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "enableDNSHostnames"
    )]
    pub enable_dns_hostnames: Option<bool>,
    /// Subdomain (headless Service name); defaults to the TrainJob name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    /// Publish DNS records before pods are ready. Defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_not_ready_addresses: Option<bool>,
}

/// `All` or `Any` of the target jobs.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Operator {
    #[default]
    All,
    Any,
}

/// When the job counts as succeeded.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SuccessPolicy {
    /// All or any of the targets.
    pub operator: Operator,
    /// Target replicated jobs; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub target_replicated_jobs: Vec<String>,
}

/// Restart limits of the whole job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// Whole-gang restarts allowed before the job fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<i32>,
    /// How restarts happen (the operator always recreates every pod).
    #[serde(default = "default_restart_strategy", skip_serializing_if = "Option::is_none")]
    pub restart_strategy: Option<RestartStrategy>,
    /// Rules matched against failures, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<FailurePolicyRule>,
}

fn default_restart_strategy() -> Option<RestartStrategy> {
    Some(RestartStrategy::Recreate)
}

/// How the gang is restarted: `Recreate`, `BlockingRecreate` or `InPlaceRestart`. The operator
/// always deletes every pod and recreates them once they are gone.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestartStrategy {
    #[default]
    Recreate,
    BlockingRecreate,
    InPlaceRestart,
}

/// What to do on a matching failure: `FailJobSet`, `RestartJobSet`, `RestartJobSetAndIgnoreMaxRestarts`,
/// `RestartJob` or `RestartJobAndIgnoreMaxRestarts`. An MPI world cannot lose a rank, so the
/// per-job actions restart the whole gang like their JobSet counterparts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicyAction {
    #[default]
    FailJobSet,
    RestartJobSet,
    RestartJobSetAndIgnoreMaxRestarts,
    RestartJob,
    RestartJobAndIgnoreMaxRestarts,
}

/// A failure rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicyRule {
    /// Rule name.
    pub name: String,
    /// Action on a match.
    pub action: FailurePolicyAction,
    /// Failure reasons that match; empty matches any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_job_failure_reasons: Vec<String>,
    /// Message regexes that match; empty matches any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_job_failure_message_patterns: Vec<String>,
    /// Replicated jobs the rule applies to; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub target_replicated_jobs: Vec<String>,
}

/// Start order of replicated jobs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StartupPolicy {
    /// `AnyOrder` or `InOrder`.
    pub startup_policy_order: StartupPolicyOrder,
}

/// `AnyOrder`, or `InOrder`: each replicated job starts when the previous one is ready.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartupPolicyOrder {
    #[default]
    AnyOrder,
    InOrder,
}

/// The coordinator pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Coordinator {
    /// Replicated job of the coordinator.
    pub replicated_job: String,
    /// Job index of the coordinator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_index: Option<i32>,
    /// Pod index of the coordinator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_index: Option<i32>,
}

/// Shared PVC templates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeClaimPolicy {
    /// PVC templates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub templates: Vec<PersistentVolumeClaim>,
    /// What happens to the PVCs when the job is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_policy: Option<VolumeRetentionPolicy>,
}

/// Retention of shared PVCs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeRetentionPolicy {
    /// `Delete` (default) or `Retain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when_deleted: Option<String>,
}
