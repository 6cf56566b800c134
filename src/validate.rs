//! Limits checked on a resolved [`Plan`] before anything is built: how many pods one job may
//! have, whether every pod name fits a hostname, images and requests, and (before the first
//! pods) whether the whole job fits the namespace's ResourceQuotas. Pure, and checked with
//! widened arithmetic, so one oversized or oddly named job fails on its own instead of wedging
//! the operator.

use k8s_openapi::api::core::v1::ResourceQuota;

use crate::api::{
    ANCESTOR_DATASET_INITIALIZER, ANCESTOR_LABEL, ANCESTOR_MODEL_INITIALIZER, STORAGE_URI_ENV, TrainJob,
};
use crate::desired::pods;
use crate::plan::Plan;
use crate::reasons;
use crate::{names, quota};

/// Longest pod name: pods use their name as `spec.hostname`, an RFC 1123 label.
pub const MAX_POD_NAME: usize = 63;

/// Default of `--max-pods-per-job`: above the largest real MPI jobs, far below what would make
/// one job's pod list a burden on the operator and the API server.
pub const DEFAULT_MAX_PODS_PER_JOB: u32 = 4096;

/// Operator-wide limits on a single job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most pods one TrainJob may have (all replicated jobs together).
    pub max_pods_per_job: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pods_per_job: DEFAULT_MAX_PODS_PER_JOB,
        }
    }
}

/// Why a resolved job cannot run here. Each message names the field, the limit and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValidateError {
    #[error(
        "the job needs {pods} pods (spec.trainer.numNodes {num_nodes} plus the launcher and other steps), but this operator allows at most {max} per job: lower spec.trainer.numNodes, or ask the cluster admin to raise --max-pods-per-job"
    )]
    TooManyPods { pods: i64, num_nodes: i32, max: u32 },
    #[error(
        "metadata.name \"{job}\" is too long for runtime {runtime}: its pod \"{pod}\" would be {length} characters, but pod hostnames are limited to {MAX_POD_NAME}; rename the TrainJob to at most {fits} characters"
    )]
    NameTooLong {
        job: String,
        runtime: String,
        pod: String,
        length: usize,
        fits: usize,
    },
    #[error(
        "the job runs {slots} MPI processes per node (spec.trainer.numProcPerNode, else the runtime's spec.mlPolicy.mpi.numProcPerNode), more than the {MAX_SLOTS} this operator allows: lower it"
    )]
    TooManySlots { slots: i32 },
    #[error(
        "{field}: image {image:?} is not a valid image reference: {why}; write it as [registry[:port]/]name[:tag][@sha256:digest]"
    )]
    BadImage {
        field: String,
        image: String,
        why: &'static str,
    },
    #[error(
        "{field}: requests.{resource} {request} is more than limits.{resource} {limit}; lower the request or raise the limit"
    )]
    RequestOverLimit {
        field: String,
        resource: String,
        request: String,
        limit: String,
    },
    #[error("{0}")]
    QuotaExceeded(String),
    #[error(
        "spec.initializer.{step}.storageUri {uri:?}: scheme {scheme:?} is not one the initializers read; use s3://BUCKET/PREFIX or hf://ORG/NAME"
    )]
    UnknownScheme {
        step: &'static str,
        uri: String,
        scheme: String,
    },
    #[error(
        "spec.initializer.{step} is set, but runtime {runtime} has no replicated job labelled {ANCESTOR_LABEL}={step}-initializer to run it: use a runtime with initializers (such as mpi-openmpi-initializers) or remove spec.initializer.{step}"
    )]
    NoInitializerStep { step: &'static str, runtime: String },
    #[error(
        "runtime {runtime} runs a {step} initializer, which needs to know what to fetch: set spec.initializer.{step}.storageUri (for example s3://BUCKET/PREFIX)"
    )]
    NothingToFetch { step: &'static str, runtime: String },
}

impl ValidateError {
    /// Stable label for the error metric.
    pub fn label(&self) -> &'static str {
        match self {
            ValidateError::TooManyPods { .. } => "too_many_pods",
            ValidateError::NameTooLong { .. } => "name_too_long",
            ValidateError::TooManySlots { .. } => "too_many_slots",
            ValidateError::BadImage { .. } => "bad_image",
            ValidateError::RequestOverLimit { .. } => "request_over_limit",
            ValidateError::QuotaExceeded(_) => "quota_exceeded",
            ValidateError::UnknownScheme { .. } => "unknown_storage_scheme",
            ValidateError::NoInitializerStep { .. } => "no_initializer_step",
            ValidateError::NothingToFetch { .. } => "nothing_to_fetch",
        }
    }

    /// The `Failed` condition reason for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ValidateError::TooManyPods { .. } => reasons::TOO_MANY_PODS,
            ValidateError::NameTooLong { .. } => reasons::NAME_TOO_LONG,
            ValidateError::TooManySlots { .. }
            | ValidateError::BadImage { .. }
            | ValidateError::RequestOverLimit { .. }
            | ValidateError::UnknownScheme { .. }
            | ValidateError::NoInitializerStep { .. }
            | ValidateError::NothingToFetch { .. } => reasons::INVALID_SPEC,
            ValidateError::QuotaExceeded(_) => reasons::QUOTA_EXCEEDED,
        }
    }
}

/// Most MPI slots per node: above any real machine's cores, low enough that `slots ×
/// numNodes` cannot overflow what MPI launchers count in.
pub const MAX_SLOTS: i32 = 1024;

/// Checks `plan` of `job` (on `runtime`, as named in messages) against `limits`. Admission runs
/// the same checks, so a job the webhook admitted only fails here if its runtime changed.
pub fn validate(job: &TrainJob, runtime: &str, plan: &Plan, limits: &Limits) -> Result<(), ValidateError> {
    size(job, runtime, plan, limits)?;
    if plan.slots > MAX_SLOTS {
        return Err(ValidateError::TooManySlots { slots: plan.slots });
    }
    containers(job, runtime, plan)
}

/// The schemes of `storageUri` that Kubeflow's initializers (and this project's) read: S3,
/// Hugging Face, and the data cache of the SDK's `DataCacheInitializer`.
const STORAGE_SCHEMES: [&str; 3] = ["s3", "hf", "cache"];

/// What `spec.initializer` asks against the initializer steps `plan` has: a scheme the
/// initializers read, a step for each setting, and a `STORAGE_URI` for each step (from the job,
/// or the runtime's default). Not part of [`validate`]: a runtime is admitted without knowing
/// what its jobs will fetch.
pub fn initializers(job: &TrainJob, runtime: &str, plan: &Plan) -> Result<(), ValidateError> {
    let steps = [
        ("dataset", ANCESTOR_DATASET_INITIALIZER),
        ("model", ANCESTOR_MODEL_INITIALIZER),
    ];
    for (step, ancestor) in steps {
        let settings = job.spec.initializer.as_ref().and_then(|i| i.for_step(ancestor));
        if let Some(uri) = settings
            .and_then(|s| s.storage_uri.as_deref())
            .filter(|u| !u.is_empty())
        {
            let scheme = uri.split_once("://").map_or(uri, |(s, _)| s);
            // As written: the initializers compare the scheme in lower case.
            if !STORAGE_SCHEMES.contains(&scheme) {
                return Err(ValidateError::UnknownScheme {
                    step,
                    uri: uri.into(),
                    scheme: scheme.into(),
                });
            }
        }
        let container = plan.jobs.iter().find_map(|j| {
            let pod = j.template.spec.as_ref()?;
            let labels = j.template.metadata.as_ref()?.labels.as_ref()?;
            (labels.get(ANCESTOR_LABEL).map(String::as_str) == Some(ancestor))
                .then(|| pod.containers.iter().find(|c| c.name == ancestor))
                .flatten()
        });
        let runtime = runtime.to_string();
        match container {
            None if settings.is_some() => return Err(ValidateError::NoInitializerStep { step, runtime }),
            None => {}
            Some(c) => {
                let uri = c.env.iter().flatten().find(|e| e.name == STORAGE_URI_ENV);
                if uri.is_none_or(|e| {
                    e.value.as_deref().unwrap_or_default().is_empty() && e.value_from.is_none()
                }) {
                    return Err(ValidateError::NothingToFetch { step, runtime });
                }
            }
        }
    }
    Ok(())
}

/// Whether the whole job (every pod of every replicated job, as built) fits the namespace's
/// `quotas`, read before its first pods: a job that cannot fit whole would otherwise get some
/// pods admitted and the rest refused, and wait forever half-created.
pub fn quotas(job: &TrainJob, plan: &Plan, quotas: &[ResourceQuota]) -> Result<(), ValidateError> {
    if quotas.is_empty() {
        return Ok(());
    }
    let attempt = job.status.as_ref().and_then(|s| s.restarts).unwrap_or(0);
    let all = pods::of_jobs(job, plan, attempt, |_| true);
    match quota::check(quotas, &quota::demand(&all)) {
        Some(message) => Err(ValidateError::QuotaExceeded(message)),
        None => Ok(()),
    }
}

fn size(job: &TrainJob, runtime: &str, plan: &Plan, limits: &Limits) -> Result<(), ValidateError> {
    let pods = plan.total_pods();
    if pods > i64::from(limits.max_pods_per_job) {
        return Err(ValidateError::TooManyPods {
            pods,
            num_nodes: plan.num_nodes,
            max: limits.max_pods_per_job,
        });
    }
    let job_name = job.metadata.name.as_deref().unwrap_or_default();
    // The last index has the most digits, so the last pod of each replicated job is its longest.
    let longest = plan
        .jobs
        .iter()
        .filter(|j| j.pods() > 0)
        .map(|j| names::pod(job_name, &j.name, j.replicas - 1, j.parallelism - 1))
        .max_by_key(String::len);
    match longest {
        Some(pod) if pod.len() > MAX_POD_NAME => Err(ValidateError::NameTooLong {
            job: job_name.into(),
            runtime: runtime.into(),
            length: pod.len(),
            fits: MAX_POD_NAME.saturating_sub(pod.len() - job_name.len()),
            pod,
        }),
        _ => Ok(()),
    }
}

/// Every container the job would run: a well-formed image, and no request above its limit. The
/// error names `spec.trainer` when the value came from there, else the runtime's container.
fn containers(job: &TrainJob, runtime: &str, plan: &Plan) -> Result<(), ValidateError> {
    let trainer = job.spec.trainer.as_ref();
    for j in &plan.jobs {
        let Some(spec) = &j.template.spec else { continue };
        for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
            let in_runtime = || {
                format!(
                    "runtime {runtime}, replicated job \"{}\", container \"{}\"",
                    j.name, c.name
                )
            };
            let image = c.image.as_deref().unwrap_or_default();
            if let Err(why) = crate::image::check(image) {
                let from_job = trainer.and_then(|t| t.image.as_deref()) == Some(image);
                return Err(ValidateError::BadImage {
                    field: if from_job {
                        "spec.trainer.image".into()
                    } else {
                        in_runtime()
                    },
                    image: image.into(),
                    why,
                });
            }
            let Some(resources) = &c.resources else { continue };
            let (Some(requests), Some(limits)) = (&resources.requests, &resources.limits) else {
                continue;
            };
            for (resource, request) in requests {
                let Some(limit) = limits.get(resource) else {
                    continue;
                };
                let (Some(r), Some(l)) = (quota::parse(request), quota::parse(limit)) else {
                    continue;
                };
                if r > l {
                    let per_node = trainer.and_then(|t| t.resources_per_node.as_ref());
                    let from_job = per_node.is_some_and(|p| {
                        let has = |m: &Option<std::collections::BTreeMap<String, _>>| {
                            m.as_ref().is_some_and(|m| m.contains_key(resource))
                        };
                        has(&p.requests) || has(&p.limits)
                    });
                    return Err(ValidateError::RequestOverLimit {
                        field: if from_job {
                            "spec.trainer.resourcesPerNode".into()
                        } else {
                            in_runtime()
                        },
                        resource: resource.clone(),
                        request: request.0.clone(),
                        limit: limit.0.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures::{job, plan};

    #[test]
    fn initializer_settings_must_match_the_runtimes_steps_and_a_known_scheme() {
        let check = |runtime: &str, initializer: serde_json::Value| {
            let j = job(json!({"runtimeRef": {"name": runtime}, "initializer": initializer}));
            initializers(&j, runtime, &plan(&j, runtime)).map_err(|e| e.to_string())
        };
        let both =
            json!({"dataset": {"storageUri": "s3://data/digits"}, "model": {"storageUri": "hf://org/model"}});
        assert_eq!(check("mpi-openmpi-initializers", both), Ok(()));
        let cached =
            json!({"dataset": {"storageUri": "cache://schema/table"}, "model": {"storageUri": "s3://m/x"}});
        assert_eq!(check("mpi-openmpi-initializers", cached), Ok(()));
        let upper = json!({"dataset": {"storageUri": "S3://data/x"}, "model": {"storageUri": "s3://m/x"}});
        assert!(
            check("mpi-openmpi-initializers", upper).is_err_and(|e| e.contains("scheme \"S3\" is not one"))
        );
        assert_eq!(
            check("mpi-openmpi-initializers", json!({"dataset": {"storageUri": "ftp://host/data"}, "model": {"storageUri": "s3://m/x"}})),
            Err("spec.initializer.dataset.storageUri \"ftp://host/data\": scheme \"ftp\" is not one the initializers read; use s3://BUCKET/PREFIX or hf://ORG/NAME".into())
        );
        assert_eq!(
            check("mpi-openmpi-initializers", json!({"dataset": {"storageUri": "s3://data/digits"}})),
            Err("runtime mpi-openmpi-initializers runs a model initializer, which needs to know what to fetch: set spec.initializer.model.storageUri (for example s3://BUCKET/PREFIX)".into())
        );
        let refused = check(
            "mpi-openmpi",
            json!({"dataset": {"storageUri": "s3://data/digits"}}),
        )
        .expect_err("no step");
        assert!(
            refused.starts_with("spec.initializer.dataset is set, but runtime mpi-openmpi has no replicated job labelled trainer.kubeflow.org/trainjob-ancestor-step=dataset-initializer"),
            "{refused}"
        );
        assert_eq!(
            check("mpi-openmpi", json!(null)),
            Ok(()),
            "no initializers, no steps"
        );
    }

    fn named(name: &str, spec: serde_json::Value) -> TrainJob {
        let mut j = job(spec);
        j.metadata.name = Some(name.into());
        j
    }

    #[test]
    fn a_name_whose_launcher_pod_exceeds_63_characters_is_refused_with_the_limit() {
        let name = "a".repeat(55);
        let j = named(&name, json!({"trainer": {"numNodes": 2}}));
        let err = validate(
            &j,
            "ClusterTrainingRuntime/mpi-openmpi",
            &plan(&j, "mpi-openmpi"),
            &Limits::default(),
        )
        .expect_err("too long");
        assert_eq!(err.reason(), "NameTooLong");
        assert_eq!(
            err.to_string(),
            format!(
                "metadata.name \"{name}\" is too long for runtime ClusterTrainingRuntime/mpi-openmpi: its pod \"{name}-launcher-0-0\" would be 68 characters, but pod hostnames are limited to 63; rename the TrainJob to at most 50 characters"
            )
        );
        let fits = named(&"a".repeat(50), json!({"trainer": {"numNodes": 2}}));
        assert_eq!(
            validate(&fits, "rt", &plan(&fits, "mpi-openmpi"), &Limits::default()),
            Ok(())
        );
    }

    #[test]
    fn the_longest_pod_name_decides_the_limit() {
        // `-node-0-100000` (14 characters) outgrows `-launcher-0-0` (13).
        let limits = Limits {
            max_pods_per_job: 200_000,
        };
        let j = named(&"b".repeat(50), json!({"trainer": {"numNodes": 100_001}}));
        let err = validate(&j, "rt", &plan(&j, "mpi-openmpi"), &limits).expect_err("too long");
        assert!(
            err.to_string()
                .contains("-node-0-100000\" would be 64 characters"),
            "{err}"
        );
        assert!(err.to_string().ends_with("at most 49 characters"), "{err}");
    }

    #[test]
    fn too_many_pods_is_refused_before_anything_is_built_and_without_overflow() {
        let j = job(json!({"trainer": {"numNodes": 2_000_000_000}}));
        let p = plan(&j, "mpi-openmpi");
        assert_eq!(p.total_pods(), 2_000_000_001);
        let err = validate(&j, "rt", &p, &Limits::default()).expect_err("too big");
        assert_eq!(err.reason(), "TooManyPods");
        assert!(
            err.to_string().starts_with(
                "the job needs 2000000001 pods (spec.trainer.numNodes 2000000000 plus the launcher and other steps), but this operator allows at most 4096 per job"
            ),
            "{err}"
        );
        let mut huge = p.clone();
        huge.jobs[0].replicas = i32::MAX;
        huge.jobs[0].parallelism = i32::MAX;
        huge.jobs[1].replicas = i32::MAX;
        assert!(huge.total_pods() > i64::from(i32::MAX), "widened, not wrapped");
        let limits = Limits {
            max_pods_per_job: 4096,
        };
        let small = job(json!({"trainer": {"numNodes": 4095}}));
        assert_eq!(
            validate(&small, "rt", &plan(&small, "mpi-openmpi"), &limits),
            Ok(())
        );
        let over = job(json!({"trainer": {"numNodes": 4096}}));
        assert!(validate(&over, "rt", &plan(&over, "mpi-openmpi"), &limits).is_err());
    }

    #[test]
    fn a_malformed_image_names_the_field_it_came_from() {
        let j = job(json!({"trainer": {"numNodes": 2, "image": "Team/Trainer:v1"}}));
        let err = validate(&j, "rt", &plan(&j, "mpi-openmpi"), &Limits::default()).expect_err("bad image");
        assert_eq!(err.reason(), "InvalidSpec");
        assert_eq!(
            err.to_string(),
            "spec.trainer.image: image \"Team/Trainer:v1\" is not a valid image reference: repository names must be lower case; write it as [registry[:port]/]name[:tag][@sha256:digest]"
        );
        let ok = job(json!({"trainer": {"numNodes": 2}}));
        let p = crate::fixtures::plan_with(&ok, "mpi-openmpi", |rt| {
            crate::fixtures::runtime_pod(rt, "node").containers[0].image = Some("busybox:".into());
        });
        let err = validate(&ok, "ClusterTrainingRuntime/x", &p, &Limits::default()).expect_err("bad image");
        assert!(
            err.to_string()
                .starts_with("runtime ClusterTrainingRuntime/x, replicated job \"node\", container \"node\": image \"busybox:\""),
            "{err}"
        );
    }

    #[test]
    fn a_request_above_its_limit_is_refused_with_both_values() {
        let j = job(json!({"trainer": {"numNodes": 2, "resourcesPerNode": {
            "requests": {"cpu": "4", "memory": "1Gi"}, "limits": {"cpu": "2000m", "memory": "1Gi"}}}}));
        let err = validate(&j, "rt", &plan(&j, "mpi-openmpi"), &Limits::default()).expect_err("over limit");
        assert_eq!(
            err.to_string(),
            "spec.trainer.resourcesPerNode: requests.cpu 4 is more than limits.cpu 2000m; lower the request or raise the limit"
        );
        let equal = job(json!({"trainer": {"numNodes": 2, "resourcesPerNode": {
            "requests": {"cpu": "2"}, "limits": {"cpu": "2000m"}}}}));
        assert_eq!(
            validate(&equal, "rt", &plan(&equal, "mpi-openmpi"), &Limits::default()),
            Ok(())
        );
    }

    #[test]
    fn slots_per_node_are_bounded() {
        let j = job(json!({"trainer": {"numNodes": 2, "numProcPerNode": MAX_SLOTS + 1}}));
        let err = validate(&j, "rt", &plan(&j, "mpi-openmpi"), &Limits::default()).expect_err("too many");
        assert_eq!(err.label(), "too_many_slots");
        assert!(
            err.to_string()
                .starts_with("the job runs 1025 MPI processes per node"),
            "{err}"
        );
        let max = job(json!({"trainer": {"numNodes": 2, "numProcPerNode": MAX_SLOTS}}));
        assert_eq!(
            validate(&max, "rt", &plan(&max, "mpi-openmpi"), &Limits::default()),
            Ok(())
        );
    }
}
