//! Training progress through the status server, as Kubeflow Trainer v2.3's clients send it: a
//! job's pods get the server's URL, CA and a token of the job's own audience; a report with that
//! token lands in `status.trainerStatus` (and in `kubectl get trainjobs`) and stays there while
//! the reconciler writes the rest of the status; every other token, and every bad report, is
//! refused with a 4xx that says why, and writes nothing; a flood is throttled.

use trainjob_testbed::support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::jobs::{HOLD, annotate, create_job, running, wait_condition, wait_pods};
use support::process::metric_sum;
use support::progress::{Reply, expired, job_ca as ca_of, post, token};
use support::{DEADLINE, Identity, admitting_operator, bed, client, eventually, logs};
use trainjob_operator::api::TrainJob;
use trainjob_operator::desired::reporting;
use trainjob_operator::progress::{audience, path};

fn port() -> u16 {
    admitting_operator()
        .status_port
        .expect("the admitting operator serves the status server")
}

/// A namespace with a running 2-node job `pi` (launcher held Running), the operator serving
/// admission and the status server.
async fn started(prefix: &str) -> (support::TestNs, Client, Api<TrainJob>) {
    logs::capture();
    admitting_operator();
    running(prefix, |_| {}, json!({})).await
}

async fn pod(c: &Client, ns: &str, name: &str) -> Pod {
    Api::<Pod>::namespaced(c.clone(), ns)
        .get(name)
        .await
        .expect("pod")
}

fn env<'a>(pod: &'a Pod, name: &str) -> Option<&'a str> {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .filter(|c| c.name == "node")
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

async fn trainer_status(jobs: &Api<TrainJob>, name: &str) -> Option<Value> {
    let job = jobs.get(name).await.expect("job");
    job.status
        .and_then(|s| s.trainer_status)
        .map(|t| serde_json::to_value(t).expect("encode"))
}

fn report(percent: i64, remaining: i64, loss: &str) -> Vec<u8> {
    json!({"trainerStatus": {
        "progressPercentage": percent, "estimatedRemainingSeconds": remaining,
        "metrics": [{"name": "loss", "value": loss}, {"name": "accuracy", "value": "0.91"}],
        "lastUpdatedTime": "2026-12-04T10:00:00.250000+00:00",
    }})
    .to_string()
    .into_bytes()
}

fn refused(reply: &Reply, status: u16, starts: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    assert!(reply.message().starts_with(starts), "{what}: {}", reply.message());
    assert_eq!(reply.body["kind"], "Status", "{what}: {reply:?}");
    assert_eq!(reply.body["code"], status, "{what}: {reply:?}");
}

#[tokio::test]
async fn a_jobs_pods_report_progress_kubectl_shows_it_and_the_reconciler_leaves_it_alone() {
    let (ns, c, jobs) = started("progress").await;
    let ns = &ns.name;
    let admin = client(Identity::Admin).await;
    let launcher = pod(&c, ns, "pi-launcher-0-0").await;
    let worker = pod(&c, ns, "pi-node-0-1").await;
    let url = env(&launcher, reporting::URL_ENV).expect("the status server's URL");
    assert_eq!(
        url,
        format!(
            "https://trainjob-operator-webhook.trainjob-system.svc:{}{}",
            port(),
            path(ns, "pi")
        )
    );
    assert_eq!(env(&worker, reporting::URL_ENV), Some(url), "workers report too");
    let ca = ca_of(&c, ns, "pi").await;
    assert_eq!(trainer_status(&jobs, "pi").await, None);

    let from_launcher = token(&admin, ns, Some(&launcher), &audience(ns, "pi")).await;
    let reply = post(
        port(),
        &ca,
        &path(ns, "pi"),
        Some(&from_launcher),
        &report(40, 90, "0.2500"),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["trainerStatus"]["progressPercentage"], 40);
    let want = json!({
        "progressPercentage": 40, "estimatedRemainingSeconds": 90,
        "metrics": [{"name": "loss", "value": "0.2500"}, {"name": "accuracy", "value": "0.91"}],
        "lastUpdatedTime": "2026-12-04T10:00:00Z",
    });
    assert_eq!(trainer_status(&jobs, "pi").await, Some(want));
    let job = jobs.get("pi").await.expect("job");
    let managers: Vec<(String, Option<String>)> = job
        .managed_fields()
        .iter()
        .map(|m| (m.manager.clone().unwrap_or_default(), m.subresource.clone()))
        .collect();
    assert!(
        managers.contains(&("trainer-status".into(), Some("status".into()))),
        "{managers:?}"
    );

    // kubectl shows it, as the CRD's printer columns say.
    let table = bed()
        .kubectl(&["get", "trainjobs", "-n", ns])
        .expect("kubectl get");
    let mut lines = table.lines();
    let head: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split("  ")
        .filter(|s| !s.is_empty())
        .map(str::trim)
        .collect();
    assert!(
        head.contains(&"PROGRESS %") && head.contains(&"SECONDS LEFT"),
        "{table}"
    );
    let row = lines.next().unwrap_or_default();
    assert!(
        row.starts_with("pi ") && row.contains(" 40 ") && row.contains(" 90 "),
        "{table}"
    );

    // A worker's own token works as well (rank 0 runs on a worker).
    let from_worker = token(&admin, ns, Some(&worker), &audience(ns, "pi")).await;
    let reply = post(
        port(),
        &ca,
        &path(ns, "pi"),
        Some(&from_worker),
        &report(55, 60, "0.2000"),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");

    // The job completes: the reconciler's status writes leave the report as it was.
    annotate(&c, ns, "pi-launcher-0-0", HOLD, None).await;
    wait_condition(&jobs, "pi", "Complete").await;
    let status = trainer_status(&jobs, "pi").await.expect("still reported");
    assert_eq!(status["progressPercentage"], 55);
    assert_eq!(status["metrics"][0]["value"], "0.2000");
    let metrics = support::http_get(&format!("{}/metrics", admitting_operator().http), "text/plain")
        .await
        .expect("metrics");
    assert!(
        metric_sum(&metrics, "trainjob_progress_reports_total{result=\"accepted\"}") >= 2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn only_a_token_of_the_jobs_own_pods_may_report_and_refusals_write_nothing() {
    let (ns, c, jobs) = started("progress-tokens").await;
    let ns = &ns.name;
    let admin = client(Identity::Admin).await;
    // Another job in the same namespace, and a job in another namespace.
    let other_jobs = create_job(&c, ns, "other", "held", json!({})).await;
    wait_pods(
        &c,
        ns,
        "other",
        &["other-launcher-0-0", "other-node-0-0", "other-node-0-1"],
    )
    .await;
    let (elsewhere, c2, _) = running("progress-elsewhere", |_| {}, json!({})).await;
    let ca = ca_of(&c, ns, "pi").await;
    let launcher = pod(&c, ns, "pi-launcher-0-0").await;
    let other = pod(&c, ns, "other-launcher-0-0").await;
    let foreign = pod(&c2, &elsewhere.name, "pi-launcher-0-0").await;
    let mine = audience(ns, "pi");
    let body = report(10, 100, "1.0");
    let send = |token: Option<String>| {
        let (ca, body) = (ca.clone(), body.clone());
        async move { post(port(), &ca, &path(ns, "pi"), token.as_deref(), &body).await }
    };

    let reply = send(None).await;
    refused(&reply, 401, "no bearer token", "no token");
    let reply = send(Some("not-a-jwt".into())).await;
    refused(
        &reply,
        401,
        "the bearer token is not a Kubernetes service account token",
        "garbage",
    );
    let reply = send(Some(
        token(&admin, ns, Some(&other), &audience(ns, "other")).await,
    ))
    .await;
    refused(
        &reply,
        403,
        "this token is for trainer.kubeflow.org/v1alpha1/namespaces/",
        "another job's token",
    );
    assert!(
        reply
            .message()
            .contains("/trainjobs/other/status, not for TrainJob"),
        "{reply:?}"
    );
    let reply = send(Some(token(&admin, ns, Some(&other), &mine).await)).await;
    refused(
        &reply,
        403,
        "pod other-launcher-0-0 is not a pod of TrainJob",
        "another job's pod",
    );
    let reply = send(Some(token(&admin, &elsewhere.name, Some(&foreign), &mine).await)).await;
    refused(
        &reply,
        403,
        &format!(
            "system:serviceaccount:{}:default is not a service account of namespace {ns}",
            elsewhere.name
        ),
        "another namespace's pod",
    );
    let reply = send(Some(token(&admin, ns, None, &mine).await)).await;
    refused(
        &reply,
        403,
        "this token is not bound to a pod",
        "a token of no pod",
    );
    let key = std::fs::read_to_string(bed().dir().join("sa.key")).expect("the bed's signing key");
    let valid = token(&admin, ns, Some(&launcher), &mine).await;
    let reply = send(Some(expired(&valid, &key))).await;
    refused(
        &reply,
        401,
        "the API server did not accept this token",
        "an expired token",
    );
    // A token of a pod that is gone.
    let gone = pod(&c, ns, "other-node-0-1").await;
    let orphan = token(&admin, ns, Some(&gone), &mine).await;
    Api::<Pod>::namespaced(c.clone(), ns)
        .delete("other-node-0-1", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    eventually("the pod to be gone", DEADLINE, || async {
        match Api::<Pod>::namespaced(c.clone(), ns)
            .get_opt("other-node-0-1")
            .await
        {
            Ok(Some(p)) if p.uid() == gone.uid() => Err("still there".to_string()),
            _ => Ok(()),
        }
    })
    .await;
    let reply = send(Some(orphan)).await;
    refused(
        &reply,
        401,
        "the API server did not accept this token",
        "a token of a deleted pod",
    );

    assert_eq!(trainer_status(&jobs, "pi").await, None, "nothing was written");
    assert_eq!(trainer_status(&other_jobs, "other").await, None);
    // And the valid token is accepted: the refusals were about the tokens, not the server.
    let reply = send(Some(valid)).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn bad_reports_get_a_4xx_naming_the_field_and_a_flood_is_throttled() {
    let (ns, c, jobs) = started("progress-bad").await;
    let ns = &ns.name;
    let admin = client(Identity::Admin).await;
    let ca = ca_of(&c, ns, "pi").await;
    let launcher = pod(&c, ns, "pi-launcher-0-0").await;
    let tok = token(&admin, ns, Some(&launcher), &audience(ns, "pi")).await;
    let send = |body: Vec<u8>| {
        let (ca, tok) = (ca.clone(), tok.clone());
        async move { post(port(), &ca, &path(ns, "pi"), Some(&tok), &body).await }
    };
    let status = |v: Value| json!({"trainerStatus": v}).to_string().into_bytes();
    let many: Vec<Value> = (0..257)
        .map(|i| json!({"name": format!("m{i}"), "value": "1"}))
        .collect();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{\"trainerStatus\": ".to_vec(), 400, "the body is not JSON"),
        (
            status(json!({"progressPercentage": 120})),
            422,
            "trainerStatus.progressPercentage must be a whole number of a percentage from 0 to 100, not 120",
        ),
        (
            status(json!({"estimatedRemainingSeconds": -1})),
            422,
            "trainerStatus.estimatedRemainingSeconds must be a whole number of seconds",
        ),
        (
            status(json!({"metrics": many})),
            422,
            "trainerStatus.metrics has 257 entries; at most 256 are kept",
        ),
        (
            status(json!({"metrics": [{"name": "loss", "value": "x".repeat(65)}]})),
            422,
            "trainerStatus.metrics[0].value has 65 characters",
        ),
        (
            status(json!({"progress": 5})),
            400,
            "unknown field trainerStatus.progress",
        ),
    ];
    for (body, code, message) in cases {
        let reply = send(body).await;
        refused(&reply, code, message, message);
    }
    // One byte over the cap: refused before it is parsed.
    let mut big = report(10, 10, "1.0");
    big.resize(trainjob_operator::progress::MAX_BODY + 1, b' ');
    let reply = send(big).await;
    refused(&reply, 413, "the body is over 65536 bytes", "a body too large");
    assert_eq!(trainer_status(&jobs, "pi").await, None, "nothing was written");

    // A flood (cheap refusals, so that it outruns the bucket however slow the machine) is
    // throttled: a job's reports are held to a burst plus one a second.
    let start = Instant::now();
    let mut answered = 0;
    let throttled = loop {
        let reply = send(b"{".to_vec()).await;
        if reply.status == 429 {
            break reply;
        }
        assert_eq!(reply.status, 400, "{reply:?}");
        answered += 1;
        assert!(answered < 1000, "never throttled");
    };
    let allowed = trainjob_operator::progress::limit::BURST + start.elapsed().as_secs_f64() + 1.0;
    // The bad reports above counted against the same bucket.
    assert!(
        f64::from(answered) <= allowed,
        "{answered} answered within {:?}",
        start.elapsed()
    );
    assert!(
        throttled.message().starts_with("this job reports too often"),
        "{throttled:?}"
    );
    let retry: u64 = throttled
        .retry_after
        .as_deref()
        .and_then(|s| s.parse().ok())
        .expect("Retry-After");
    assert!((1..=2).contains(&retry), "{retry}");
    // After the wait, reports go through again.
    eventually("a report after the wait", Duration::from_secs(10), || async {
        match send(report(20, 80, "0.5")).await {
            r if r.status == 200 => Ok(()),
            r => Err(format!("{r:?}")),
        }
    })
    .await;
    assert_eq!(
        trainer_status(&jobs, "pi")
            .await
            .map(|s| s["progressPercentage"].clone()),
        Some(json!(20))
    );
}
