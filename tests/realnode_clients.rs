//! The user's tools against real MPI pods on the real node, as a tenant holding the `edit` role:
//! `kubectl trainjob logs --follow` (the real binary) from a job's first gang through a gang
//! restart to its end, `kubectl trainjob cancel` of a running job, and the Kubeflow Python SDK's
//! contract suite (`tests/sdk`, pytest in the virtual environment of `hack/sdk.sh`).

use trainjob_testbed::support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::jobs::{grant_edit, runtime};
use support::realnode::{RUN_DEADLINE, create, finished, pod_report};
use support::{DEADLINE, Identity, TestNs, admitting_operator, bed, client, eventually, real_bed};
use trainjob_operator::api::TrainJob;
use trainjob_operator::names::TRAINJOB_NAME_LABEL;

/// The Open MPI 4 image of the bed.
const IMAGE: &str = "trainjob.local/openmpi4:bed";

/// A namespace where the tenant may work, on a bed whose operator serves progress reports.
async fn tenant_namespace(prefix: &str) -> (TestNs, Client) {
    real_bed();
    let port = admitting_operator().status_port.expect("status server");
    bed()
        .expose_status_server(port)
        .await
        .expect("the status server's Service");
    let ns = TestNs::new(prefix).await;
    let admin = client(Identity::Admin).await;
    grant_edit(&admin, &ns.name, Identity::TenantA).await;
    (ns, admin)
}

/// `kubectl trainjob ARGS` as the tenant; (exit code, stdout, stderr).
fn plugin(args: &[&str]) -> (i32, String, String) {
    let out = plugin_command(args).output().expect("running kubectl-trainjob");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn plugin_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kubectl-trainjob"));
    command
        .arg("--kubeconfig")
        .arg(bed().kubeconfig_path(Identity::TenantA))
        .args(args);
    command
}

/// A running `kubectl trainjob logs --follow` and the lines it has printed so far.
struct Following {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Following {
    fn start(args: &[&str]) -> Following {
        let mut child = plugin_command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kubectl-trainjob logs --follow");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("stdout");
        let seen = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                seen.lock().expect("lines").push(line);
            }
        });
        Following { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    async fn until(&self, what: &str, wanted: impl Fn(&str) -> bool) {
        eventually(what, RUN_DEADLINE, || async {
            let lines = self.lines();
            match lines.iter().any(|l| wanted(l)) {
                true => Ok(()),
                false => Err(lines[lines.len().saturating_sub(10)..].join("\n")),
            }
        })
        .await
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn logs_follow_a_job_through_a_gang_restart_to_its_end() {
    let (ns, c) = tenant_namespace("follow").await;
    let ns = ns.name.as_str();
    runtime(&c, ns, "mpi-openmpi", "restarts", |spec| {
        spec["template"]["spec"]["failurePolicy"] = json!({"maxRestarts": 1});
    })
    .await;
    let train = [
        "mpirun",
        "-n",
        "2",
        "/home/mpiuser/train",
        "--epochs",
        "12",
        "--epoch-seconds",
        "1",
        "--target",
        "0.5",
    ];
    create(
        &c,
        ns,
        "twice",
        json!({"kind": "TrainingRuntime", "name": "restarts"}),
        json!({"image": IMAGE, "numNodes": 2, "command": train}),
    )
    .await;
    // Started before the job has a pod: the plugin waits for them.
    let follow = Following::start(&["logs", "twice", "-n", ns, "--follow"]);
    follow
        .until("the first gang's epoch 3", |l| {
            l.starts_with("[launcher-0] epoch 3/")
        })
        .await;
    // A worker lost mid-run: the operator restarts the whole gang (maxRestarts 1).
    Api::<Pod>::namespaced(c.clone(), ns)
        .delete("twice-node-0-1", &DeleteParams::default())
        .await
        .expect("delete a worker");
    let (end, reason, message) = finished(&c, ns, "twice").await;
    assert_eq!(
        end,
        "Complete",
        "{reason}: {message}\n{}",
        pod_report(&c, ns, "twice").await
    );

    let mut child = follow;
    let code = eventually("the plugin to end with the job", DEADLINE, || {
        let status = child.child.try_wait();
        async move {
            match status {
                Ok(Some(status)) => Ok(status.code()),
                _ => Err("still following".to_string()),
            }
        }
    })
    .await;
    let lines = child.lines();
    let text = lines.join("\n");
    assert_eq!(code, Some(0), "{text}");
    // Both gangs' launchers and workers, the second named by its attempt.
    for wanted in [
        "[launcher-0] epoch 3/12 ",
        "[node-0] Server listening on",
        "[node-1] Accepted publickey for mpiuser",
        "[launcher-0 attempt 1] rank 0 of 2 on twice-node-0-0",
        "[node-1 attempt 1] Accepted publickey for mpiuser",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(wanted)),
            "no line {wanted:?} in:\n{text}"
        );
    }
    // The second gang's run from its first epoch to its end, each line once and in order.
    let epochs: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("[launcher-0 attempt 1] epoch "))
        .map(|l| l.split('/').next().unwrap_or_default())
        .collect();
    let expected: Vec<String> = (1..=12).map(|e| e.to_string()).collect();
    // (`epoch E/N loss L accuracy A ...`, from rank 0)
    assert_eq!(epochs, expected, "{text}");
    let last_first_gang = lines.iter().rposition(|l| l.starts_with("[launcher-0] "));
    let first_second_gang = lines
        .iter()
        .position(|l| l.starts_with("[launcher-0 attempt 1] "));
    assert!(last_first_gang < first_second_gang, "{text}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[launcher-0 attempt 1] final accuracy") && l.ends_with("reached")),
        "{text}"
    );
}

/// The names of the `K`s of `ns` that `selector` picks.
async fn names<K>(c: &Client, ns: &str, selector: &ListParams) -> Result<Vec<String>, String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let list = Api::<K>::namespaced(c.clone(), ns).list(selector).await;
    Ok(list
        .map_err(|e| e.to_string())?
        .items
        .iter()
        .map(|o| o.name_any())
        .collect())
}

#[tokio::test]
async fn cancel_stops_a_running_job_and_leaves_nothing_behind() {
    let (ns, c) = tenant_namespace("cancel").await;
    let ns = ns.name.as_str();
    let train = [
        "mpirun",
        "-n",
        "2",
        "/home/mpiuser/train",
        "--epochs",
        "600",
        "--epoch-seconds",
        "1",
    ];
    create(
        &c,
        ns,
        "endless",
        json!({"kind": "ClusterTrainingRuntime", "name": "mpi-openmpi"}),
        json!({"image": IMAGE, "numNodes": 2, "command": train}),
    )
    .await;
    let timeout = format!("{}s", RUN_DEADLINE.as_secs());
    let (code, out, err) = plugin(&[
        "wait",
        "endless",
        "-n",
        ns,
        "--for",
        "running",
        "--timeout",
        &timeout,
    ]);
    assert_eq!(code, 0, "{out}{err}\n{}", pod_report(&c, ns, "endless").await);
    // Training is under way on real pods (`-o wide`: on the real node).
    let node = bed().real_node().expect("the real node").name().to_string();
    let node = format!("[launcher-0 on {node}] epoch ");
    eventually("an epoch in the launcher's log", RUN_DEADLINE, || async {
        let (_, log, err) = plugin(&["logs", "endless", "-n", ns, "--role", "launcher", "-o", "wide"]);
        match log.contains(&node) {
            true => Ok(()),
            false => Err(format!("{log}{err}")),
        }
    })
    .await;

    let (code, out, err) = plugin(&["cancel", "endless", "-n", ns]);
    assert_eq!(code, 0, "{out}{err}");
    let selector = ListParams::default().labels(&format!("{TRAINJOB_NAME_LABEL}=endless"));
    eventually("the job and all it made gone", RUN_DEADLINE, || async {
        let mut left = Vec::new();
        if Api::<TrainJob>::namespaced(c.clone(), ns)
            .get_opt("endless")
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            left.push("TrainJob endless".to_string());
        }
        left.extend(names::<Pod>(&c, ns, &selector).await?);
        left.extend(names::<Secret>(&c, ns, &selector).await?);
        left.extend(names::<ConfigMap>(&c, ns, &selector).await?);
        left.extend(names::<Service>(&c, ns, &selector).await?);
        match left.is_empty() {
            true => Ok(()),
            false => Err(format!("left: {left:?}")),
        }
    })
    .await;
    let (code, _, err) = plugin(&["describe", "endless", "-n", ns]);
    assert_eq!(code, 1);
    assert!(err.contains("TrainJob endless not found"), "{err}");
}

#[tokio::test]
async fn the_kubeflow_python_sdk_drives_mpi_jobs() {
    let (ns, _) = tenant_namespace("sdk").await;
    let root = trainjob_testbed::repo_root();
    let venv = Command::new(root.join("hack/sdk.sh"))
        .stderr(Stdio::inherit())
        .output()
        .expect("hack/sdk.sh");
    assert!(venv.status.success(), "hack/sdk.sh failed");
    let venv = String::from_utf8_lossy(&venv.stdout).trim().to_string();
    let report = std::env::temp_dir().join(format!("{}-junit.xml", ns.name));
    // The data of the suite's S3 case, in a bucket of its own.
    let s3 = bed().s3().expect("the real node's S3 server");
    let bucket = format!("{}-data", ns.name);
    support::data::seed_digits(s3, &bucket).await;
    let out = Command::new(format!("{venv}/bin/python"))
        .args(["-m", "pytest", "-v", "-p", "no:cacheprovider", "--junitxml"])
        .arg(&report)
        .arg(root.join("tests/sdk"))
        .env("KUBECONFIG", bed().kubeconfig_path(Identity::TenantA))
        .env("KUBEFLOW_SYSTEM_NAMESPACE", "trainjob-system")
        .env("TRAINJOB_TEST_NAMESPACE", &ns.name)
        .env("TRAINJOB_TEST_IMAGE", IMAGE)
        .env("TRAINJOB_TEST_REAL_NODE", trainjob_testbed::REAL_NODE)
        .env("TRAINJOB_TEST_S3_BUCKET", &bucket)
        .env("TRAINJOB_TEST_S3_ENDPOINT", &s3.endpoint)
        .env("TRAINJOB_TEST_S3_ACCESS_KEY", &s3.access_key)
        .env("TRAINJOB_TEST_S3_SECRET_KEY", &s3.secret_key)
        .output()
        .expect("pytest");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // pytest's own report is part of this test's output: its cases count in CI's log.
    println!("{said}");
    assert!(out.status.success(), "the SDK suite failed:\n{said}");
    let junit = std::fs::read_to_string(&report).expect("pytest's junit report");
    let suite = junit
        .split("<testsuite ")
        .nth(1)
        .and_then(|s| s.split('>').next())
        .unwrap_or_default();
    for clean in ["errors=\"0\"", "failures=\"0\"", "skipped=\"0\""] {
        assert!(suite.contains(clean), "{suite}");
    }
    assert!(suite.contains("tests=\"10\""), "every case ran: {suite}");
}

#[tokio::test]
async fn the_dashboard_streams_a_real_jobs_merged_logs_to_its_end() {
    use tower::ServiceExt;
    let (ns, c) = tenant_namespace("dash-logs").await;
    let ns = ns.name.as_str();
    let train = [
        "mpirun",
        "-n",
        "2",
        "/home/mpiuser/train",
        "--epochs",
        "4",
        "--target",
        "0.5",
    ];
    create(
        &c,
        ns,
        "streamed",
        json!({"kind": "ClusterTrainingRuntime", "name": "mpi-openmpi"}),
        json!({"image": IMAGE, "numNodes": 2, "command": train}),
    )
    .await;
    let options = kube::config::KubeConfigOptions::default();
    let cluster = kube::Config::from_custom_kubeconfig(bed().kubeconfig(Identity::Admin), &options)
        .await
        .expect("the bed's cluster");
    let app = trainjob_operator::dashboard::router(trainjob_operator::dashboard::Identity::bearer(cluster));
    // Followed from before the job's pods run, as the tenant.
    let path = format!("/api/namespaces/{ns}/trainjobs/streamed/logs?follow=true");
    let response = eventually("the tenant's log stream", DEADLINE, || async {
        let request = http::Request::get(&path)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", Identity::TenantA.token()),
            )
            .body(axum::body::Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("an answer");
        match response.status() {
            http::StatusCode::OK => Ok(response),
            status => Err(status.to_string()),
        }
    })
    .await;
    let mut events = support::sse::Events::new(response.into_body().into_data_stream());
    let mut lines = Vec::new();
    loop {
        let (event, data) = events.next_within(RUN_DEADLINE).await.expect("an end event");
        match event.as_str() {
            "line" => lines.push(format!(
                "{} {}",
                data["prefix"].as_str().unwrap_or_default(),
                data["text"].as_str().unwrap_or_default()
            )),
            "end" => break,
            other => panic!("{other}: {data}\nso far:\n{}", lines.join("\n")),
        }
    }
    let text = lines.join("\n");
    let epochs: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("[launcher-0] epoch "))
        .map(|l| l.split('/').next().unwrap_or_default())
        .collect();
    assert_eq!(epochs, ["1", "2", "3", "4"], "{text}");
    for wanted in [
        "[node-0] Server listening on",
        "[node-1] Accepted publickey for mpiuser",
        "[launcher-0] final accuracy",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(wanted)),
            "no line {wanted:?} in:\n{text}"
        );
    }
    let (end, reason, message) = finished(&c, ns, "streamed").await;
    assert_eq!(end, "Complete", "{reason}: {message}");
}

#[tokio::test]
async fn the_page_in_chromium_shows_a_real_jobs_progress_metrics_and_logs_as_they_happen() {
    use support::browser::{Browser, Driver, dashboard, sign_in};
    let (ns, c) = tenant_namespace("page-real").await;
    let ns = ns.name.as_str();
    let base = dashboard().await;
    let driver = Driver::start();
    let browser = Browser::open(&driver).await;
    sign_in(&browser, &base, Identity::TenantA).await;
    // The page is open before the job exists; a log line with markup must stay text.
    browser.goto(&format!("{base}/#/{ns}/jobs/watched")).await;
    let markup = "<img src=x onerror=window.pwned=1> markup stays text";
    // Long enough for metrics-server's two scrapes of the workers (CPU is a rate).
    let train = format!(
        "echo '{markup}'; exec mpirun -n 2 /home/mpiuser/train --epochs 16 --epoch-seconds 2.5 --target 0.5"
    );
    grant_metrics(ns);
    create(
        &c,
        ns,
        "watched",
        json!({"kind": "ClusterTrainingRuntime", "name": "mpi-openmpi"}),
        json!({"image": IMAGE, "numNodes": 2, "command": ["sh", "-c", train]}),
    )
    .await;
    browser.goto(&format!("{base}/#/{ns}")).await;
    browser
        .until(
            "the job in the list",
            RUN_DEADLINE,
            "return document.querySelector('#jobs tr[data-job=watched]')?.dataset.phase",
            |v| v.as_str().filter(|p| *p == "Running").map(|_| ()),
        )
        .await;
    browser.click("#jobs tr[data-job=watched] a").await;

    // The progress bar moves as the training reports, until the job is Complete.
    let mut percents: Vec<i64> = Vec::new();
    let mut pictured = false;
    let mut used = None;
    let deadline = tokio::time::Instant::now() + RUN_DEADLINE;
    loop {
        let now = browser
            .until(
                "the job page",
                DEADLINE,
                "return document.querySelector('#phase') && \
                 {phase: document.querySelector('#phase').dataset.phase, \
                  percent: document.querySelector('#summary progress')?.value ?? null, \
                  points: Number(document.querySelector('figure[data-metric=loss]')?.dataset.points ?? 0), \
                  memory: [...document.querySelectorAll('#pods-table td.memory')].map(td => td.textContent)}",
                |v| v.get("phase").map(|_| v.clone()),
            )
            .await;
        if let Some(p) = now["percent"].as_i64()
            && percents.last() != Some(&p)
        {
            percents.push(p);
        }
        let memory = now["memory"]
            .as_array()
            .filter(|m| m.iter().any(|m| m.as_str().is_some_and(|m| m.ends_with("MiB"))));
        if let Some(memory) = memory {
            used.get_or_insert(memory.clone());
        }
        if !pictured && now["points"].as_i64().unwrap_or(0) >= 2 && used.is_some() {
            browser.screenshot("dashboard-progress").await;
            browser.screenshot_from("dashboard-pods", "#h-pods").await;
            pictured = true;
        }
        match now["phase"].as_str() {
            Some("Complete") if percents.last() == Some(&100) => break,
            Some("Failed") => panic!("the job failed: {now}"),
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not Complete at 100 %: {now}, seen {percents:?}"
        );
        // Sampled often enough to see each report (they land seconds apart).
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        used.is_some(),
        "the pods' memory from metrics.k8s.io was shown while the job ran"
    );
    let moving: Vec<&i64> = percents.iter().filter(|p| **p > 0 && **p < 100).collect();
    assert!(
        moving.len() >= 2,
        "the bar moved through several values: {percents:?}"
    );
    assert!(
        percents.windows(2).all(|w| w[0] < w[1]),
        "only forward: {percents:?}"
    );

    // Its logs streamed in while it ran: every epoch, the workers' sshd, the markup as text.
    let logs = browser
        .until(
            "the whole log",
            DEADLINE,
            "return {text: document.querySelector('#logs').textContent, \
             lines: [...document.querySelectorAll('#logs .line')].map(l => l.textContent), \
             images: document.querySelectorAll('#logs img').length, pwned: window.pwned ?? null}",
            |v| {
                v["text"]
                    .as_str()
                    .filter(|t| t.contains("final accuracy"))
                    .map(|_| v.clone())
            },
        )
        .await;
    let lines: Vec<&str> = logs["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let epochs: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("[launcher-0] epoch "))
        .map(|l| l.split('/').next().unwrap_or_default())
        .collect();
    let every: Vec<String> = (1..=16).map(|e| e.to_string()).collect();
    assert_eq!(epochs, every, "{lines:#?}");
    assert!(
        lines.contains(&format!("[launcher-0] {markup}").as_str()),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("[node-1] Accepted publickey")),
        "{lines:#?}"
    );
    assert_eq!(logs["images"], 0, "{logs}");
    assert_eq!(logs["pwned"], Value::Null, "{logs}");

    // The metrics it reported, charted over time; the timeline to its end.
    let charts = browser
        .until("the charts", DEADLINE, "return {metrics: Object.fromEntries([...document.querySelectorAll('figure[data-metric]')].map(f => [f.dataset.metric, Number(f.dataset.points)])), \
             milestones: [...document.querySelectorAll('svg.timeline [data-milestone]')].map(g => g.dataset.milestone)}", |v| {
            v["milestones"].as_array().filter(|m| m.iter().any(|m| m == "Complete")).map(|_| v.clone())
        })
        .await;
    for metric in ["loss", "accuracy"] {
        assert!(
            charts["metrics"][metric].as_i64().unwrap_or(0) >= 2,
            "{metric}: {charts}"
        );
    }
    for milestone in [
        "Created",
        "Scheduled",
        "WorkersReady",
        "LauncherStarted",
        "Complete",
    ] {
        assert!(
            charts["milestones"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m == milestone)),
            "{milestone}: {charts}"
        );
    }
    browser.screenshot("dashboard-complete").await;
    browser.close().await;
}

/// Lets the tenant read `metrics.k8s.io` pods in `ns` (Kubernetes' own `edit` role does not).
fn grant_metrics(ns: &str) {
    let reader = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "metrics-reader", "namespace": ns},
        "rules": [{"apiGroups": ["metrics.k8s.io"], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]});
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "metrics-reader", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "metrics-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": Identity::TenantA.name()}]});
    for object in [reader, binding] {
        bed()
            .kubectl_as(Identity::Admin, &["apply", "-f", "-"], &object.to_string())
            .expect("granting metrics.k8s.io pods");
    }
}
