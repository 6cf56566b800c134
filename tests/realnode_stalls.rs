//! Stuck and failing pods as a real kubelet reports them, told on the job: an image that does
//! not exist (there is no registry, so the pull really fails) or is not a valid name, a missing
//! Secret key (and the job going on once it is added), a crash-looping sidecar, a failing init
//! container, and a real out-of-memory kill followed by the rerun with more memory that completes
//! (TC-E2E-004). The test operator's `--stall-timeout` is [`support::STALL_TIMEOUT`].

use trainjob_testbed::support;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::jobs::{pod_spec, pods_of, runtime, wait_event, wait_stalled};
use support::realnode::{RUN_DEADLINE, create, finished};
use support::{STALL_TIMEOUT, TestNs, client, operator, real_bed};
use trainjob_operator::api::TrainJob;

const IMAGE: &str = "trainjob.local/openmpi4:bed";

/// `mpirun` of the pi program over 2 workers of 2 slots.
fn pi(image: &str) -> Value {
    json!({"image": image, "numNodes": 2, "numProcPerNode": 2,
        "command": ["mpirun", "-n", "4", "/home/mpiuser/pi"]})
}

async fn setup(prefix: &str) -> (TestNs, Client) {
    real_bed();
    operator();
    (TestNs::new(prefix).await, client(support::Identity::Admin).await)
}

/// The job's `Stalled` condition once it has `status`, `reason` and `words` in its message,
/// waited for as long as a job may take on the real node.
async fn stalled(c: &Client, ns: &str, job: &str, status: &str, reason: &str, words: &str) -> Condition {
    let jobs = Api::namespaced(c.clone(), ns);
    wait_stalled(&jobs, job, (status, reason, words), RUN_DEADLINE).await
}

/// The `Failed` condition of a finished job, after checking that it failed for `reason`.
async fn failed(c: &Client, ns: &str, job: &str, reason: &str) -> Condition {
    let (type_, why, message) = finished(c, ns, job).await;
    assert_eq!(
        (type_.as_str(), why.as_str()),
        ("Failed", reason),
        "{job}: {message}"
    );
    let job: TrainJob = Api::namespaced(c.clone(), ns).get(job).await.expect("job");
    let status = job.status.unwrap_or_default();
    status
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .expect("Failed")
}

/// How long after `stalled` began `failed` came, in seconds.
fn waited(stalled: &Condition, failed: &Condition) -> i64 {
    failed
        .last_transition_time
        .0
        .duration_since(stalled.last_transition_time.0)
        .as_secs()
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_stalls_the_job_then_fails_it_an_invalid_one_fails_at_once() {
    let (ns, c) = setup("images").await;
    let ns = ns.name.as_str();
    let missing = "trainjob.local/no-such-image:bed";
    create(&c, ns, "nopull", json!({"name": "mpi-openmpi"}), pi(missing)).await;
    create(
        &c,
        ns,
        "badname",
        json!({"name": "mpi-openmpi"}),
        pi("trainjob.local/Bad:Name:x"),
    )
    .await;

    let stall = stalled(&c, ns, "nopull", "True", "ImagePullBackOff", "(1 more pod alike)").await;
    assert!(
        stall.message.starts_with(&format!(
            "worker pod nopull-node-0-0: container node cannot pull image \"{missing}\": "
        )) && stall
            .message
            .contains("(1 more pod alike); check the image name and tag"),
        "{}",
        stall.message
    );
    // The Event tells the stall as it was first seen (perhaps one pod yet).
    wait_event(&c, ns, "nopull", "ImagePullBackOff", |r, n| {
        r == "ImagePullBackOff"
            && n.starts_with("worker pod nopull-node-0-")
            && n.contains(&format!("cannot pull image \"{missing}\""))
    })
    .await;
    let end = failed(&c, ns, "nopull", "ImagePullBackOff").await;
    assert!(
        end.message.ends_with(&format!(
            "; the job was stalled for {}s (--stall-timeout)",
            STALL_TIMEOUT.as_secs()
        )),
        "{}",
        end.message
    );
    assert!(
        waited(&stall, &end) >= STALL_TIMEOUT.as_secs() as i64,
        "failed {}s after the stall began",
        waited(&stall, &end)
    );

    // A reference no registry could serve never reaches a kubelet: the operator refuses it
    // before any pod, naming the field (InvalidImageName is the kubelet's word for the same,
    // for a reference that got past this check).
    let end = failed(&c, ns, "badname", "InvalidSpec").await;
    assert!(
        end.message.starts_with(
            "spec.trainer.image: image \"trainjob.local/Bad:Name:x\" is not a valid image reference: "
        ),
        "{}",
        end.message
    );
    assert!(pods_of(&c, ns, "badname").await.is_empty(), "no pod was created");
    wait_event(&c, ns, "badname", "InvalidSpec", |r, n| {
        r == "InvalidSpec" && n == end.message
    })
    .await;
}

#[tokio::test]
async fn a_missing_secret_key_holds_the_workers_until_it_is_added_then_the_job_completes() {
    let (ns, c) = setup("secret").await;
    let ns = ns.name.as_str();
    let secrets: Api<Secret> = Api::namespaced(c.clone(), ns);
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "creds"}, "stringData": {"user": "u"}}))
            .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("creating the Secret");
    let mut trainer = pi(IMAGE);
    trainer["env"] =
        json!([{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]);
    create(&c, ns, "creds", json!({"name": "mpi-openmpi"}), trainer).await;
    let stall = stalled(
        &c,
        ns,
        "creds",
        "True",
        "CreateContainerConfigError",
        "(1 more pod alike)",
    )
    .await;
    assert!(
        stall
            .message
            .starts_with("worker pod creds-node-0-0: container node cannot be created: ")
            && stall
                .message
                .contains(&format!("couldn't find key token in Secret {ns}/creds"))
            && stall
                .message
                .contains("create the missing Secret, ConfigMap or key"),
        "{}",
        stall.message
    );
    wait_event(&c, ns, "creds", "CreateContainerConfigError", |r, n| {
        r == "CreateContainerConfigError" && n.contains("couldn't find key token")
    })
    .await;

    let key = json!({"stringData": {"token": "t"}});
    secrets
        .patch("creds", &PatchParams::default(), &Patch::Merge(&key))
        .await
        .expect("adding the key");
    stalled(&c, ns, "creds", "False", "Recovered", "").await;
    wait_event(&c, ns, "creds", "Recovered", |r, _| r == "Recovered").await;
    let (type_, _, message) = finished(&c, ns, "creds").await;
    assert_eq!(type_, "Complete", "{message}");
}

#[tokio::test]
async fn a_crash_looping_sidecar_and_a_failing_init_container_are_named() {
    let (ns, c) = setup("init").await;
    let ns = ns.name.as_str();
    runtime(&c, ns, "mpi-openmpi", "sidecar", |spec| {
        pod_spec(spec, "node")["initContainers"] = json!([{"name": "helper", "image": IMAGE, "restartPolicy": "Always",
            // Until a sidecar has started (its startup probe passed) the pod's own containers do
            // not start: it cannot turn Ready between two crashes and let the job run past it.
            "startupProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
            "command": ["bash", "-c", "echo the helper broke; exit 2"]}]);
    })
    .await;
    runtime(&c, ns, "mpi-openmpi", "initfail", |spec| {
        pod_spec(spec, "node")["initContainers"] = json!([{"name": "fetch", "image": IMAGE,
            "command": ["bash", "-c", "echo no data; exit 7"]}]);
    })
    .await;
    let training = |name: &str| json!({"kind": "TrainingRuntime", "name": name});
    create(&c, ns, "sidecar", training("sidecar"), pi(IMAGE)).await;
    create(&c, ns, "initfail", training("initfail"), pi(IMAGE)).await;

    let stall = stalled(&c, ns, "sidecar", "True", "CrashLoopBackOff", "").await;
    assert!(
        stall.message.starts_with("worker pod sidecar-node-0-")
            && stall
                .message
                .contains(": container helper keeps crashing: exited with code 2 (Error), restarted ")
            && stall.message.contains("(its log: `kubectl logs sidecar-node-0-"),
        "{}",
        stall.message
    );
    wait_event(&c, ns, "sidecar", "CrashLoopBackOff", |r, n| {
        r == "CrashLoopBackOff" && n.contains("container helper keeps crashing")
    })
    .await;
    let end = failed(&c, ns, "sidecar", "CrashLoopBackOff").await;
    assert!(waited(&stall, &end) >= STALL_TIMEOUT.as_secs() as i64);

    let end = failed(&c, ns, "initfail", "FailedJobs").await;
    assert!(
        end.message.starts_with("pod initfail-node-0-")
            && end.message.contains(
                " failed: init container fetch exited with code 7 (Error); see `kubectl logs initfail-node-0-"
            ),
        "{}",
        end.message
    );
    wait_event(&c, ns, "initfail", "FailedJobs", |r, n| {
        r == "FailedJobs" && n == end.message
    })
    .await;
}

/// TC-E2E-004: the launcher (an MPI host here) allocates past its memory limit and the kernel
/// kills it; the job names the pod, the container and the limit, and says where to raise it. The
/// same job again with the limit raised, as a user would resubmit it, completes.
#[tokio::test]
async fn out_of_memory_is_named_with_the_limit_and_the_rerun_with_more_memory_completes() {
    let (ns, c) = setup("oom").await;
    let ns = ns.name.as_str();
    runtime(&c, ns, "mpi-openmpi", "asnode", |spec| {
        spec["mlPolicy"]["mpi"]["runLauncherAsNode"] = json!(true);
    })
    .await;
    // `tail` keeps the one 256 MiB line it is given: the training step needs that much.
    let trainer = |memory: &str| {
        json!({"image": IMAGE, "numNodes": 2, "numProcPerNode": 2,
            "resourcesPerNode": {"limits": {"memory": memory}},
            "command": ["bash", "-c", "head -c 256M /dev/zero | tail > /dev/null && mpirun -n 4 /home/mpiuser/pi"]})
    };
    let runtime_ref = json!({"kind": "TrainingRuntime", "name": "asnode"});
    create(&c, ns, "small", runtime_ref.clone(), trainer("64Mi")).await;
    let end = failed(&c, ns, "small", "FailedJobs").await;
    assert_eq!(
        end.message,
        "pod small-launcher-0-0 failed: container node exited with code 137 (OOMKilled); it ran out of memory at its limit of 64Mi: raise the memory limit (spec.trainer.resourcesPerNode, or the runtime's)"
    );
    wait_event(&c, ns, "small", "FailedJobs", |r, n| {
        r == "FailedJobs" && n == end.message
    })
    .await;
    create(&c, ns, "bigger", runtime_ref, trainer("512Mi")).await;
    let (type_, _, message) = finished(&c, ns, "bigger").await;
    assert_eq!(type_, "Complete", "{message}");
}
