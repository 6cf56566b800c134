//! Errors that cannot heal become a `Failed` condition after one reconcile, with the field and
//! the fix, and are not retried; errors that can heal are retried until they do; one oversized
//! job never holds up anyone else's. Each test owns one error label of
//! `trainjob_reconcile_errors_total`, so the tests of this binary can run in parallel.

use trainjob_testbed::support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::jobs::{
    create_job, pod_spec, pods_of, runtime, setup, wait_condition, wait_event, wait_first_pod,
};
use support::{DEADLINE, eventually, operator};
use trainjob_operator::api::TrainJob;

/// Labels of the errors that may heal by themselves; a healthy bed never produces them.
const TRANSIENT: [&str; 3] = ["read_kube", "write_kube", "ssh_keygen"];

/// `trainjob_reconcile_errors_total{error=label}` of the shared operator.
fn errors(label: &str) -> u64 {
    let text = operator().metrics.encode();
    let prefix = format!("trainjob_reconcile_errors_total{{error=\"{label}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Watches the error counter for 10 s: `label` must stay at `count` (no retries of a permanent
/// error) and no transient error may appear.
async fn not_retried(label: &str, count: u64) {
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < until {
        assert_eq!(
            errors(label),
            count,
            "{label} must be counted once per job, then never retried"
        );
        for transient in TRANSIENT {
            assert_eq!(errors(transient), 0, "unexpected transient error {transient}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for `Failed` on `name` and returns its reason and message.
async fn failed(jobs: &Api<TrainJob>, name: &str) -> (String, String) {
    let (_, cond) = wait_condition(jobs, name, "Failed").await;
    (cond.reason, cond.message)
}

async fn exists<K>(c: &Client, ns: &str, name: &str) -> bool
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(c.clone(), ns)
        .get_opt(name)
        .await
        .expect("get")
        .is_some()
}

#[tokio::test]
async fn a_name_too_long_for_its_pods_fails_at_once_naming_the_limit() {
    let (ns, c) = setup("longname").await;
    runtime(&c, &ns.name, "mpi-openmpi", "rt", |_| {}).await;
    // Valid for the CRD (at most 63), but `<name>-launcher-0-0` is 68 characters.
    let name = "a".repeat(55);
    let jobs = create_job(&c, &ns.name, &name, "rt", json!({"trainer": {"numNodes": 2}})).await;
    let (reason, message) = failed(&jobs, &name).await;
    assert_eq!(reason, "NameTooLong");
    assert_eq!(
        message,
        format!(
            "metadata.name \"{name}\" is too long for runtime TrainingRuntime/rt: its pod \"{name}-launcher-0-0\" would be 68 characters, but pod hostnames are limited to 63; rename the TrainJob to at most 50 characters"
        )
    );
    wait_event(&c, &ns.name, &name, "NameTooLong", |r, _| r == "NameTooLong").await;
    assert_eq!(errors("name_too_long"), 1);
    not_retried("name_too_long", 1).await;
    assert!(
        pods_of(&c, &ns.name, &name).await.is_empty(),
        "nothing half-created"
    );
    assert!(!exists::<Secret>(&c, &ns.name, &format!("{name}-mpi-ssh-auth")).await);
}

#[tokio::test]
async fn a_huge_job_fails_alone_while_a_job_in_another_namespace_completes() {
    let (huge_ns, c) = setup("huge").await;
    let (other_ns, _) = setup("bystander").await;
    runtime(&c, &huge_ns.name, "mpi-openmpi", "rt", |_| {}).await;
    runtime(&c, &other_ns.name, "mpi-openmpi", "rt", |_| {}).await;
    let huge = create_job(
        &c,
        &huge_ns.name,
        "huge",
        "rt",
        json!({"trainer": {"numNodes": 2_000_000_000}}),
    )
    .await;
    let normal = create_job(
        &c,
        &other_ns.name,
        "normal",
        "rt",
        json!({"trainer": {"numNodes": 2}}),
    )
    .await;

    let (reason, message) = failed(&huge, "huge").await;
    assert_eq!(reason, "TooManyPods");
    assert!(
        message.starts_with(
            "the job needs 2000000001 pods (spec.trainer.numNodes 2000000000 plus the launcher and other steps), but this operator allows at most 4096 per job: lower spec.trainer.numNodes"
        ),
        "{message}"
    );
    wait_condition(&normal, "normal", "Complete").await;
    // A job created after the huge one is reconciled too.
    let later = create_job(
        &c,
        &other_ns.name,
        "later",
        "rt",
        json!({"trainer": {"numNodes": 1}}),
    )
    .await;
    wait_condition(&later, "later", "Complete").await;
    not_retried("too_many_pods", 1).await;
    assert!(pods_of(&c, &huge_ns.name, "huge").await.is_empty());
}

#[tokio::test]
async fn objects_owned_by_someone_else_fail_the_job_and_are_left_untouched() {
    let (ns, c) = setup("foreign").await;
    runtime(&c, &ns.name, "mpi-openmpi", "rt", |_| {}).await;
    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        labels: Some(BTreeMap::from([(
            "owner".to_string(),
            "someone-else".to_string(),
        )])),
        ..Default::default()
    };
    // A Secret with the name the job's SSH Secret would get.
    let secret = Api::<Secret>::namespaced(c.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: meta("pi-mpi-ssh-auth"),
                string_data: Some(BTreeMap::from([(
                    "ssh-privatekey".to_string(),
                    "theirs".to_string(),
                )])),
                ..Default::default()
            },
        )
        .await
        .expect("foreign Secret");
    // A ConfigMap with the name of another job's runtime snapshot.
    Api::<ConfigMap>::namespaced(c.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: meta("snap-runtime-snapshot"),
                data: Some(BTreeMap::from([("runtime".to_string(), "{}".to_string())])),
                ..Default::default()
            },
        )
        .await
        .expect("foreign ConfigMap");

    // Pods with the names two jobs' first workers would get: one with the labels the
    // operator's pod watch selects (caught before anything is created), one without (caught
    // when its create is refused).
    for (name, labelled) in [("clash-node-0-0", true), ("hidden-node-0-0", false)] {
        let job = name.split('-').next().unwrap_or_default();
        foreign_pod(&c, &ns.name, name, labelled.then_some(job)).await;
    }

    let jobs = create_job(&c, &ns.name, "pi", "rt", json!({})).await;
    let (reason, message) = failed(&jobs, "pi").await;
    assert_eq!(reason, "ObjectConflict");
    assert_eq!(
        message,
        "Secret pi-mpi-ssh-auth already exists and belongs to no TrainJob (it has no owner), not to this TrainJob: delete that Secret and re-create the TrainJob, or give the TrainJob another name"
    );
    create_job(&c, &ns.name, "snap", "rt", json!({})).await;
    let (reason, message) = failed(&jobs, "snap").await;
    assert_eq!(reason, "ObjectConflict");
    assert!(
        message.starts_with("ConfigMap snap-runtime-snapshot already exists"),
        "{message}"
    );

    for job in ["clash", "hidden"] {
        create_job(&c, &ns.name, job, "rt", json!({"trainer": {"numNodes": 2}})).await;
        let (reason, message) = failed(&jobs, job).await;
        assert_eq!(reason, "ObjectConflict");
        assert_eq!(
            message,
            format!(
                "Pod {job}-node-0-0 already exists and belongs to no TrainJob (it has no owner), not to this TrainJob: delete that Pod and re-create the TrainJob, or give the TrainJob another name"
            )
        );
        // The job's pods go out together, so its other worker may have been created before
        // the conflict; the failed job removes it.
        eventually(&format!("only the foreign pod of {job}"), DEADLINE, || async {
            let pods: Vec<String> = pods_of(&c, &ns.name, job)
                .await
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(|p| p.name_any())
                .collect();
            match pods.is_empty() || pods == [format!("{job}-node-0-0")] {
                true => Ok(()),
                false => Err(format!("{pods:?}")),
            }
        })
        .await;
        // Its key was made before its first pod, and goes once the job failed (after the
        // status that says so).
        let secret = format!("{job}-mpi-ssh-auth");
        eventually(&format!("{secret} to be deleted"), DEADLINE, || async {
            match exists::<Secret>(&c, &ns.name, &secret).await {
                false => Ok(()),
                true => Err("still there".to_string()),
            }
        })
        .await;
    }
    let foreign = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), &ns.name);
    for name in ["clash-node-0-0", "hidden-node-0-0"] {
        let pod = foreign.get(name).await.expect("the foreign pod is left alone");
        assert!(pod.metadata.deletion_timestamp.is_none(), "{name} was deleted");
    }

    not_retried("object_conflict", 4).await;
    let after = Api::<Secret>::namespaced(c.clone(), &ns.name)
        .get("pi-mpi-ssh-auth")
        .await
        .expect("Secret");
    assert_eq!(
        (after.uid(), after.data),
        (secret.uid(), secret.data),
        "left as it was"
    );
    assert!(after.metadata.owner_references.is_none());
    for job in ["pi", "snap"] {
        assert!(pods_of(&c, &ns.name, job).await.is_empty());
        assert!(!exists::<Service>(&c, &ns.name, job).await);
    }
}

/// A pod nobody owns, named `name`; with the labels of job `job`'s workers when given.
async fn foreign_pod(c: &Client, ns: &str, name: &str, job: Option<&str>) {
    let labels = job.map(|job| {
        use trainjob_operator::names::{JOB_ROLE_LABEL, MANAGED_BY, MANAGED_BY_LABEL, TRAINJOB_NAME_LABEL};
        BTreeMap::from([
            (TRAINJOB_NAME_LABEL.to_string(), job.to_string()),
            (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
            (JOB_ROLE_LABEL.to_string(), "node".to_string()),
        ])
    });
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .expect("pod");
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("foreign pod");
}

/// A pod that carries a job's labels but is not its own is never counted or deleted (a
/// collection delete by label would take it), and is reported on the job once.
#[tokio::test]
async fn a_pod_with_a_jobs_labels_that_it_does_not_own_is_ignored_and_reported() {
    let (ns, c) = setup("stray").await;
    runtime(&c, &ns.name, "mpi-openmpi", "rt", |_| {}).await;
    foreign_pod(&c, &ns.name, "pi-node-0-5", Some("pi")).await;
    let jobs = create_job(&c, &ns.name, "pi", "rt", json!({"trainer": {"numNodes": 2}})).await;
    wait_condition(&jobs, "pi", "Complete").await;
    let events = wait_event(&c, &ns.name, "pi", "ForeignPods", |r, _| r == "ForeignPods").await;
    let reported: Vec<&(String, String)> = events.iter().filter(|(r, _)| r == "ForeignPods").collect();
    assert_eq!(reported.len(), 1, "{events:?}");
    assert!(
        reported[0]
            .1
            .starts_with("pi-node-0-5 carry this TrainJob's labels but it does not own them"),
        "{reported:?}"
    );
    let stray = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), &ns.name)
        .get("pi-node-0-5")
        .await
        .expect("the stray pod is left alone");
    assert!(
        stray.metadata.deletion_timestamp.is_none(),
        "deleted with the job's workers"
    );
}

#[tokio::test]
async fn a_pod_the_api_server_rejects_fails_the_job_with_its_reason() {
    let (ns, c) = setup("rejected").await;
    // The CRD cannot know which DNS policies exist, and neither does the operator; the pod
    // validation does. (Without the webhook in this bed, the runtime is not checked either.)
    runtime(&c, &ns.name, "mpi-openmpi", "rt", |rt| {
        pod_spec(rt, "node")["dnsPolicy"] = json!("Bogus");
    })
    .await;
    let jobs = create_job(&c, &ns.name, "pi", "rt", json!({"trainer": {"numNodes": 2}})).await;
    let (reason, message) = failed(&jobs, "pi").await;
    assert_eq!(reason, "ObjectRejected");
    assert!(
        message.starts_with("the API server rejected pod pi-node-0-0: Pod \"pi-node-0-0\" is invalid:"),
        "{message}"
    );
    assert!(message.contains("Unsupported value: \"Bogus\""), "{message}");
    not_retried("object_rejected", 1).await;
    assert!(pods_of(&c, &ns.name, "pi").await.is_empty());
}

#[tokio::test]
async fn a_request_above_its_limit_fails_before_any_pod_where_no_webhook_refused_it() {
    let (ns, c) = setup("over-limit").await;
    runtime(&c, &ns.name, "mpi-openmpi", "rt", |_| {}).await;
    let spec = json!({"trainer": {"numNodes": 2, "resourcesPerNode": {
        "requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}});
    let jobs = create_job(&c, &ns.name, "pi", "rt", spec).await;
    let (reason, message) = failed(&jobs, "pi").await;
    assert_eq!(reason, "InvalidSpec");
    assert_eq!(
        message,
        "spec.trainer.resourcesPerNode: requests.cpu 2 is more than limits.cpu 1; lower the request or raise the limit"
    );
    not_retried("request_over_limit", 1).await;
    assert!(pods_of(&c, &ns.name, "pi").await.is_empty());
}

#[tokio::test]
async fn a_leftover_of_an_earlier_job_is_waited_for_not_fatal() {
    let (ns, c) = setup("leftover").await;
    runtime(&c, &ns.name, "mpi-openmpi", "rt", |_| {}).await;
    // What a deleted TrainJob `pi` leaves behind until the garbage collector runs: its Secret,
    // owned by a TrainJob of the same name that no longer exists.
    let leftover = Api::<Secret>::namespaced(c.clone(), &ns.name)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("pi-mpi-ssh-auth".into()),
                    // Holds the Secret until the test lets the garbage collector have it.
                    finalizers: Some(vec!["trainjob.test/hold".into()]),
                    owner_references: Some(vec![
                        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                            api_version: "trainer.kubeflow.org/v1alpha1".into(),
                            kind: "TrainJob".into(),
                            name: "pi".into(),
                            uid: "00000000-0000-0000-0000-000000000000".into(),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect("leftover Secret");
    let jobs = create_job(&c, &ns.name, "pi", "rt", json!({"trainer": {"numNodes": 1}})).await;
    eventually("the leftover to be retried", DEADLINE, || async {
        match errors("leftover_object") {
            0 => Err("no retry yet".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    let job = jobs.get("pi").await.expect("job");
    assert!(
        job.status.is_none_or(|s| s.conditions.is_empty()),
        "waiting is not failing"
    );
    assert!(
        pods_of(&c, &ns.name, "pi").await.is_empty(),
        "no pods before the Secret is ours"
    );
    let release = json!({"metadata": {"finalizers": null}});
    Api::<Secret>::namespaced(c.clone(), &ns.name)
        .patch(
            "pi-mpi-ssh-auth",
            &PatchParams::default(),
            &Patch::Merge(&release),
        )
        .await
        .expect("release the leftover");
    wait_condition(&jobs, "pi", "Complete").await;
    // The leftover was collected and the job ran with a Secret of its own, which went with the
    // job's completion.
    let secrets = Api::<Secret>::namespaced(c.clone(), &ns.name);
    eventually("no Secret left", DEADLINE, || async {
        match secrets.get_opt("pi-mpi-ssh-auth").await {
            Ok(None) => Ok(()),
            other => Err(format!(
                "{:?} (the leftover was {:?})",
                other.map(|s| s.map(|s| s.uid())),
                leftover.uid()
            )),
        }
    })
    .await;
    let job = jobs.get("pi").await.expect("job");
    assert!(
        !job.status
            .expect("status")
            .conditions
            .iter()
            .any(|c| c.type_ == "Failed"),
        "a leftover is transient"
    );
    eventually(
        "no transient read/write errors",
        Duration::from_secs(1),
        || async {
            match TRANSIENT.iter().map(|l| errors(l)).sum::<u64>() {
                0 => Ok(()),
                n => Err(format!("{n}")),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_job_bigger_than_the_quota_fails_whole_before_any_pod_exists() {
    let (ns, c) = setup("quota").await;
    let ns = ns.name.as_str();
    let quota: k8s_openapi::api::core::v1::ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "team"},
        "spec": {"hard": {"requests.cpu": "10", "pods": "20"}},
    }))
    .expect("quota");
    Api::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &quota)
        .await
        .expect("create quota");
    // A quota on requests.cpu makes the API server refuse pods that do not state one.
    runtime(&c, ns, "mpi-openmpi", "rt", |spec| {
        let launcher = pod_spec(spec, "launcher");
        launcher["containers"][0]["resources"] = json!({"requests": {"cpu": "1"}});
    })
    .await;
    let cpus =
        |nodes: i32| json!({"trainer": {"numNodes": nodes, "resourcesPerNode": {"requests": {"cpu": "4"}}}});

    let jobs = create_job(&c, ns, "big", "rt", cpus(3)).await;
    let (_, failed) = wait_condition(&jobs, "big", "Failed").await;
    assert_eq!(failed.reason, "QuotaExceeded");
    assert!(
        failed.message.starts_with(
            "ResourceQuota team cannot hold the whole job (requests.cpu: requested 13, used 0, allowed 10); no pod was created"
        ),
        "{}",
        failed.message
    );
    assert!(pods_of(&c, ns, "big").await.is_empty(), "nothing half-created");
    assert_eq!(errors("quota_exceeded"), 1);

    // A job that fits runs as usual.
    create_job(&c, ns, "small", "rt", cpus(2)).await;
    let (_, complete) = wait_condition(&jobs, "small", "Complete").await;
    assert_eq!(complete.reason, "AllJobsCompleted");
}

#[tokio::test]
async fn a_gang_policy_the_cluster_does_not_serve_fails_before_any_pod() {
    let (ns, c) = setup("nogang").await;
    let ns = ns.name.as_str();
    // This bed has no Volcano CRD.
    runtime(&c, ns, "mpi-openmpi", "volcano", |spec| {
        spec["podGroupPolicy"] = json!({"volcano": {}});
    })
    .await;
    let jobs = create_job(&c, ns, "pi", "volcano", json!({"trainer": {"numNodes": 2}})).await;
    let (_, failed) = wait_condition(&jobs, "pi", "Failed").await;
    assert_eq!(failed.reason, "GangSchedulingUnavailable");
    assert_eq!(
        failed.message,
        "the runtime asks for gang scheduling with spec.podGroupPolicy.volcano but this cluster does not serve scheduling.volcano.sh/v1beta1 PodGroups: install Volcano, or use a runtime without it"
    );
    assert!(pods_of(&c, ns, "pi").await.is_empty(), "no pod without its gang");
    assert_eq!(errors("gang_unavailable"), 1);
}

/// Deleting the namespace while the operator creates a job's pods ends that job quietly: the
/// writes the terminating namespace refuses are neither retried nor counted as errors.
#[tokio::test]
async fn a_namespace_deleted_mid_creation_ends_the_job_quietly() {
    let (ns, c) = setup("doomed").await;
    runtime(&c, &ns.name, "mpi-openmpi", "rt", |_| {}).await;
    create_job(&c, &ns.name, "pi", "rt", json!({"trainer": {"numNodes": 64}})).await;
    wait_first_pod(&c, &ns.name, "pi").await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.clone());
    namespaces
        .delete(&ns.name, &Default::default())
        .await
        .expect("delete the namespace");
    eventually("the namespace to be gone", Duration::from_secs(120), || async {
        match namespaces.get_opt(&ns.name).await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|n| n.and_then(|n| n.status)))),
        }
    })
    .await;
    for transient in TRANSIENT {
        assert_eq!(errors(transient), 0, "a refused write counted as {transient}");
    }
    let complaints: Vec<String> = support::logs::raw()
        .into_iter()
        .filter(|l| l.contains(&ns.name) && l.contains("\"WARN\""))
        .collect();
    assert!(complaints.is_empty(), "{complaints:#?}");
}
