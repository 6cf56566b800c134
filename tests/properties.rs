//! No input panics: property tests over arbitrary TrainJobs and runtimes, valid and invalid,
//! through everything the operator computes from them without a server: `resolve`, `validate`,
//! the hostfile, the Service, the pods, the gang objects, the quota check and the lifecycle
//! decision, with observed pods in every phase. Starting from the shipped runtimes, each case
//! bends many fields at once: sizes of any sign and magnitude, reserved and odd names, missing or
//! renamed replicated jobs and containers, patches of unknown jobs, any quantity text. And the
//! admission webhook: whole or truncated AdmissionReviews through its decoder and its rules.
//!
//! Inputs refused by `resolve` or `validate` test only the refusal, so the test counts how many
//! cases get to the builders and to a second decision, prints the shares and fails below
//! [`LEAST_BUILT`] and [`LEAST_DECIDED_AGAIN`] percent.

use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};
use trainjob_operator::api::{TrainJob, TrainingRuntimeSpec};
use trainjob_operator::desired::{gang, hostfile, pods};
use trainjob_operator::observed::Observed;
use trainjob_operator::plan::Cluster;
use trainjob_operator::resolve::Runtime;
use trainjob_operator::validate::{Limits, validate};
use trainjob_operator::{lifecycle, quota, resolve};

const RUNTIMES: [&str; 3] = ["mpi-openmpi", "mpi-intel", "mpi-mpich"];

fn shipped(name: &str) -> Value {
    let path = format!("{}/config/runtimes/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("runtime file");
    let rt: Value = serde_saphyr::from_str(&text).expect("runtime yaml");
    rt["spec"].clone()
}

/// Integers around every boundary the operator checks, and the extremes.
fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        -3i64..70,
        Just(i64::from(i32::MAX)),
        Just(i64::from(i32::MIN)),
        Just(4096),
        Just(1_000_000),
    ]
}

/// A size: usually small (zero and negative included), sometimes any of [`int`].
fn size() -> impl Strategy<Value = i64> {
    prop_oneof![9 => -1i64..6, 1 => int()]
}

/// Names: the ones the operator knows, reserved MPI variables, and arbitrary text.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("node".to_string()),
        Just("launcher".to_string()),
        Just("OMPI_MCA_orte_default_hostfile".to_string()),
        Just("HYDRA_LAUNCHER_EXTRA_ARGS".to_string()),
        "[a-z][a-z0-9-]{0,70}",
        ".{0,20}",
    ]
}

/// Quantity text, well formed or not.
fn quantity() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,4}(m|Mi|Gi|k|)",
        Just("1e400".to_string()),
        Just("-5".to_string()),
        Just("0.000000001".to_string()),
        Just("99999999999999999999Ei".to_string()),
        ".{0,8}",
    ]
}

fn maybe<T: std::fmt::Debug + Clone>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    prop::option::weighted(0.6, s)
}

/// Rarely: edits that make most jobs invalid, so that most cases get past `resolve`.
fn rarely<T: std::fmt::Debug + Clone>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    prop::option::weighted(0.05, s)
}

/// An env var or container name: usually an ordinary one.
fn usual_name() -> impl Strategy<Value = String> {
    prop_oneof![9 => "[A-Z][A-Z0-9_]{0,12}", 1 => name()]
}

/// A replicated job name: usually one the runtime has.
fn job_name() -> impl Strategy<Value = String> {
    prop_oneof![
        9 => Just("node".to_string()),
        9 => Just("launcher".to_string()),
        1 => name(),
    ]
}

/// A TrainJob's name: usually short enough for its pods' names, sometimes not.
fn job_title() -> impl Strategy<Value = String> {
    prop_oneof![9 => "[a-z][a-z0-9-]{0,20}", 1 => "[a-z][a-z0-9-]{0,70}"]
}

/// A runtime spec: a shipped one, bent.
fn runtime() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(RUNTIMES.to_vec()),
        maybe(size()),
        maybe(size()),
        any::<bool>(),
        maybe(".{0,30}"),
        prop::collection::vec(
            (
                0usize..2,
                rarely(name()),
                maybe(size()),
                maybe(size()),
                rarely(name()),
            ),
            0..3,
        ),
        0u8..5,
        prop::bool::weighted(0.05),
    )
        .prop_map(|(base, nodes, procs, as_node, mount, edits, gang, drop_mpi)| {
            let mut spec = shipped(base);
            if let Some(n) = nodes {
                spec["mlPolicy"]["numNodes"] = json!(n);
            }
            if let Some(n) = procs {
                spec["mlPolicy"]["mpi"]["numProcPerNode"] = json!(n);
            }
            spec["mlPolicy"]["mpi"]["runLauncherAsNode"] = json!(as_node);
            if let Some(m) = mount {
                spec["mlPolicy"]["mpi"]["sshAuthMountPath"] = json!(m);
            }
            if drop_mpi {
                spec["mlPolicy"] = json!({"numNodes": 1});
            }
            for (i, rename, replicas, parallelism, container) in edits {
                let job = &mut spec["template"]["spec"]["replicatedJobs"][i];
                if let Some(r) = rename {
                    job["name"] = json!(r);
                }
                if let Some(r) = replicas {
                    job["replicas"] = json!(r);
                }
                if let Some(p) = parallelism {
                    job["template"]["spec"]["parallelism"] = json!(p);
                }
                if let Some(c) = container {
                    job["template"]["spec"]["template"]["spec"]["containers"][0]["name"] = json!(c);
                }
            }
            spec["podGroupPolicy"] = match gang {
                0 => Value::Null,
                1 => json!({"workload": {"scheduleTimeoutSeconds": 5}}),
                2 => json!({"coscheduling": {"scheduleTimeoutSeconds": 60}}),
                3 => json!({"volcano": {"networkTopology": {"mode": "hard", "highestTierAllowed": 1}}}),
                _ => json!({"workload": {}}),
            };
            spec
        })
}

/// A TrainJob spec, and its name.
fn job() -> impl Strategy<Value = (String, Value)> {
    (
        job_title(),
        maybe(size()),
        maybe(size()),
        prop::collection::vec(usual_name(), 0..3),
        maybe(quantity()),
        maybe(quantity()),
        prop::collection::vec(
            (job_name(), prop_oneof![9 => Just("node".to_string()), 1 => usual_name()], prop::bool::weighted(0.05)),
            0..3,
        ),
        prop::bool::weighted(0.2),
        // Most deadlines tried have passed (the job is 5 minutes old): a job with one fails
        // before any pod, so only some jobs get one.
        prop::option::weighted(0.25, int()),
    )
        .prop_map(|(name, nodes, procs, env, cpu, gpu, patches, suspend, deadline)| {
            let mut trainer = json!({});
            if let Some(n) = nodes {
                trainer["numNodes"] = json!(n);
            }
            if let Some(n) = procs {
                trainer["numProcPerNode"] = json!(n);
            }
            trainer["env"] = json!(env.iter().map(|n| json!({"name": n, "value": "x"})).collect::<Vec<_>>());
            let mut requests = json!({});
            if let Some(c) = cpu {
                requests["cpu"] = json!(c);
            }
            if let Some(g) = gpu {
                requests["nvidia.com/gpu"] = json!(g);
            }
            trainer["resourcesPerNode"] = json!({"requests": requests, "limits": requests});
            let patches: Vec<Value> = patches
                .iter()
                .map(|(rjob, container, env)| {
                    let mut c = json!({"name": container});
                    if *env {
                        c["env"] = json!([{"name": container, "value": "y"}]);
                    }
                    json!({"manager": "example.com/fuzz", "trainingRuntimeSpec": {"template": {
                        "metadata": {"annotations": {"scheduling.volcano.sh/queue-name": container}},
                        "spec": {"replicatedJobs": [{"name": rjob, "template": {"spec": {"template": {
                            "metadata": {"labels": {"fuzz": "1"}},
                            "spec": {"nodeSelector": {"pool": "a"}, "containers": [c]},
                        }}}}]},
                    }}})
                })
                .collect();
            let mut spec = json!({"runtimeRef": {"name": "rt"}, "trainer": trainer, "runtimePatches": patches, "suspend": suspend});
            if let Some(d) = deadline {
                spec["activeDeadlineSeconds"] = json!(d);
            }
            (name, spec)
        })
}

/// A pod as the API server would return it: `phase`, Ready or not, bound or not.
fn observed(pod: &Pod, phase: &str, ready: bool, exit: i32) -> Pod {
    let mut pod = pod.clone();
    pod.metadata.uid = Some(format!("uid-{}", pod.metadata.name.clone().unwrap_or_default()));
    pod.spec.get_or_insert_default().node_name = Some("node-1".into());
    pod.status = serde_json::from_value(json!({
        "phase": phase,
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
        "containerStatuses": [{"name": "node", "ready": ready, "restartCount": 0, "image": "i", "imageID": "",
            "state": {"terminated": {"exitCode": exit, "reason": "Error"}}}],
    }))
    .ok();
    pod
}

/// How far the generated cases got. A case that fails `resolve` or `validate` exercises only
/// the refusal: the property means something only if many get to the builders and on to a
/// second lifecycle decision with pods to judge.
#[derive(Default)]
struct Reach {
    cases: AtomicUsize,
    /// Resolved and validated: through the builders and the first decision.
    built: AtomicUsize,
    /// On to a second decision over observed pods.
    decided_again: AtomicUsize,
}

/// The least share (percent) of cases that must get to the builders, and on to a second
/// decision with pods; the generators keep most edits rare to stay above it.
const LEAST_BUILT: usize = 40;
const LEAST_DECIDED_AGAIN: usize = 25;

#[test]
fn nothing_the_operator_computes_from_a_job_panics() {
    let config = ProptestConfig {
        cases: 1000,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let reach = Reach::default();
    let inputs = (
        runtime(),
        job(),
        prop::collection::vec((0u8..4, any::<bool>(), -2i32..140), 0..8),
        quantity(),
    );
    let result = runner.run(&inputs, |(rt, (name, spec), phases, cpu_quota)| {
        computes(&reach, rt, name, spec, phases, cpu_quota)
    });
    if let Err(e) = result {
        panic!("{e}\n{runner}");
    }
    let cases = reach.cases.load(Ordering::Relaxed);
    let share = |n: &AtomicUsize| n.load(Ordering::Relaxed) * 100 / cases.max(1);
    let (built, again) = (share(&reach.built), share(&reach.decided_again));
    eprintln!("{cases} cases: {built}% reached the builders, {again}% a second decision over observed pods");
    assert!(
        built >= LEAST_BUILT && again >= LEAST_DECIDED_AGAIN,
        "too few generated jobs get past resolve and validate: {built}% to the builders (at least {LEAST_BUILT}%), {again}% to a second decision (at least {LEAST_DECIDED_AGAIN}%)"
    );
}

/// Everything the operator computes from one job and runtime, `reach` counting how far it got.
fn computes(
    reach: &Reach,
    rt: Value,
    name: String,
    spec: Value,
    phases: Vec<(u8, bool, i32)>,
    cpu_quota: String,
) -> Result<(), TestCaseError> {
    reach.cases.fetch_add(1, Ordering::Relaxed);
    let Ok(runtime) = serde_json::from_value::<TrainingRuntimeSpec>(rt) else {
        return Ok(());
    };
    let Ok(job) = serde_json::from_value::<TrainJob>(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": "ns", "uid": "uid-1", "creationTimestamp": "2026-11-25T10:00:00Z"},
        "spec": spec,
    })) else {
        return Ok(());
    };
    let runtime = Runtime::new("TrainingRuntime/rt", runtime);
    let Ok(plan) = resolve::resolve(&job, &runtime, &Cluster::default()) else {
        return Ok(());
    };
    let limits = Limits {
        max_pods_per_job: 256,
    };
    if validate(&job, "TrainingRuntime/rt", &plan, &limits).is_err() {
        return Ok(());
    }
    reach.built.fetch_add(1, Ordering::Relaxed);
    let _ = hostfile::configmap(&job, &plan);
    let _ = pods::service(&job, &plan);
    let _ = gang::gang(&job, &plan);
    let now = Time("2026-11-25T10:05:00Z".parse().expect("time"));
    let first = lifecycle::decide(&job, &plan, &Observed::default(), &now);
    prop_assert!(first.is_ok(), "{first:?}");
    let Ok(first) = first else { return Ok(()) };
    let built: Vec<Pod> = first
        .create
        .iter()
        .map(|(i, at)| pods::pod(&job, &plan, &plan.jobs[*i], *at, 0))
        .collect();
    let _ = gang::plugin_pod_group(&job, &plan, &built);
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "q"},
        "spec": {"hard": {"requests.cpu": cpu_quota, "limits.nvidia.com/gpu": "8", "pods": "10"}},
        "status": {"used": {"requests.cpu": "1"}},
    }))
    .expect("quota");
    let _ = quota::check(&[quota], &quota::demand(&built));

    // Then as the pods move through their phases, in any order.
    let seen: Vec<std::sync::Arc<Pod>> = built
        .iter()
        .zip(phases.iter().cycle())
        .map(|(pod, (phase, ready, exit))| {
            let phase = ["Pending", "Running", "Succeeded", "Failed"][usize::from(*phase)];
            std::sync::Arc::new(observed(pod, phase, *ready, *exit))
        })
        .collect();
    if !seen.is_empty() {
        reach.decided_again.fetch_add(1, Ordering::Relaxed);
    }
    let seen = Observed {
        pods: seen,
        secret: true,
        ..Observed::default()
    };
    let mut job = job;
    job.status = Some(first.status.clone());
    let next = lifecycle::decide(&job, &plan, &seen, &now);
    prop_assert!(next.is_ok(), "{next:?}");
    let Ok(next) = next else { return Ok(()) };
    job.status = Some(next.status.clone());
    prop_assert!(lifecycle::decide(&job, &plan, &seen, &now).is_ok());
    Ok(())
}

/// An AdmissionReview as the API server sends it, for `kind`, carrying `object` and `old`.
fn review(kind: &str, operation: &str, object: Value, old: Option<Value>) -> Vec<u8> {
    let resource = format!("{}s", kind.to_lowercase());
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "trainer.kubeflow.org", "version": "v1alpha1", "kind": kind},
            "resource": {"group": "trainer.kubeflow.org", "version": "v1alpha1", "resource": resource},
            "name": object["metadata"]["name"], "namespace": "ns",
            "operation": operation,
            "userInfo": {"username": "fuzz", "groups": ["system:authenticated"]},
            "object": object, "oldObject": old, "dryRun": false,
        },
    }))
    .expect("review")
}

/// Cuts `body` at `cut` (per mille of its length) when `truncate`: the decoder must refuse
/// malformed bodies in words, not panic.
fn damaged(mut body: Vec<u8>, truncate: bool, cut: usize) -> Vec<u8> {
    if truncate {
        body.truncate(body.len() * cut / 1000);
    }
    body
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn admission_decodes_and_judges_any_review_without_panicking(
        rt in runtime(),
        (name, spec) in job(),
        (_, old_spec) in job(),
        operation in prop::sample::select(vec!["CREATE", "UPDATE", "DELETE", "CONNECT", "BOGUS"]),
        truncate in prop::bool::weighted(0.2),
        cut in 0usize..1000,
        garbage in ".{0,64}",
    ) {
        use trainjob_operator::webhook::{self, rules};
        let limits = Limits { max_pods_per_job: 256 };
        let object = |spec: &Value| json!({
            "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": name, "namespace": "ns"}, "spec": spec,
        });
        let old = (operation == "UPDATE").then(|| object(&old_spec));
        let body = damaged(review("TrainJob", operation, object(&spec), old), truncate, cut);
        prop_assert!(webhook::decode(garbage.as_bytes()).is_err());
        if let Ok(req) = webhook::decode(&body) {
            let job = webhook::typed::<TrainJob>(req.object.as_ref());
            let old = webhook::typed::<TrainJob>(req.old_object.as_ref());
            if let (Ok(Some(job)), Ok(old)) = (job, old) {
                let fetched = serde_json::from_value::<TrainingRuntimeSpec>(rt.clone()).ok().map(|spec| {
                    Runtime { label: "TrainingRuntime/rt".into(), spec, deprecated: true }
                });
                let _ = rules::needs_runtime(&job, old.as_ref());
                let _ = rules::trainjob(&job, old.as_ref(), fetched.as_ref(), &limits);
                let now = Time("2026-11-25T10:05:00Z".parse().expect("time"));
                let _ = rules::stamp_patch_times(&job, old.as_ref(), &now);
            }
        }
        let runtime = json!({
            "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainingRuntime",
            "metadata": {"name": "rt", "namespace": "ns", "labels": {"trainer.kubeflow.org/support": "deprecated"}},
            "spec": rt,
        });
        if let Ok(req) = webhook::decode(&damaged(review("TrainingRuntime", operation, runtime, None), truncate, cut))
            && let Ok(Some(rt)) = webhook::typed::<trainjob_operator::api::TrainingRuntime>(req.object.as_ref())
        {
            let _ = rules::runtime("TrainingRuntime/rt", &rt.spec, &rt.metadata.labels.unwrap_or_default(), &limits);
        }
    }
}
