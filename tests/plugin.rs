//! `kubectl trainjob` (the real binary) against the local control plane, as a user with a
//! kubeconfig: `list` and `describe` of a running, a failed and a waiting job, `wait` and its exit
//! codes, `submit`, `cancel --suspend`, `resume` and `cancel`, and one clear line (and a non-zero
//! exit) for another tenant's jobs, an unknown job, a bad flag and a cluster that is not there.

use trainjob_testbed::support;

use std::path::Path;
use std::process::Command;

use kube::api::Api;
use serde_json::json;
use support::jobs::{
    EXIT, HOLD, create_job, grant_edit, pod_meta, pod_spec, pods_of, runtime, setup, wait_condition,
    wait_pods,
};
use support::{DEADLINE, Identity, bed, eventually};
use trainjob_operator::api::TrainJob;

/// The pods of the job `mine` while it runs.
const MINE_PODS: [&str; 3] = ["mine-launcher-0-0", "mine-node-0-0", "mine-node-0-1"];

/// Runs the plugin as `identity`; (exit code, stdout, stderr).
fn plugin(identity: Identity, args: &[&str]) -> (i32, String, String) {
    plugin_with(&bed().kubeconfig_path(identity), args)
}

fn plugin_with(kubeconfig: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-trainjob"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("running kubectl-trainjob");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The `list` rows as (name, phase, progress, nodes, restarts, reason): everything but the age.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<String> = l.split_whitespace().map(String::from).collect();
            let mut kept = cells[..5.min(cells.len())].to_vec();
            kept.extend(cells.get(6).cloned());
            kept
        })
        .collect()
}

#[tokio::test]
async fn list_describe_and_wait_tell_a_running_a_failed_and_a_waiting_job_apart() {
    let (ns, c) = setup("plugin").await;
    let ns = ns.name.as_str();
    runtime(&c, ns, "mpi-openmpi", "held", |rt| {
        pod_meta(rt, "launcher")["annotations"][HOLD] = json!("true");
    })
    .await;
    runtime(&c, ns, "mpi-openmpi", "fails", |rt| {
        pod_meta(rt, "launcher")["annotations"][EXIT] = json!("3");
    })
    .await;
    runtime(&c, ns, "mpi-openmpi", "huge", |rt| {
        pod_spec(rt, "node")["containers"][0]["resources"] = json!({"requests": {"cpu": "5000"}});
    })
    .await;
    let jobs = create_job(&c, ns, "run", "held", json!({})).await;
    create_job(&c, ns, "oops", "fails", json!({})).await;
    create_job(&c, ns, "big", "huge", json!({})).await;
    wait_pods(
        &c,
        ns,
        "run",
        &["run-launcher-0-0", "run-node-0-0", "run-node-0-1"],
    )
    .await;
    wait_condition(&jobs, "oops", "Failed").await;
    eventually("the big job's stall", DEADLINE, || async {
        let job = jobs.get("big").await.map_err(|e| e.to_string())?;
        let stalled = job
            .status
            .iter()
            .flat_map(|s| &s.conditions)
            .any(|c| c.type_ == "Stalled");
        if stalled {
            Ok(())
        } else {
            Err("not stalled yet".to_string())
        }
    })
    .await;
    let expected = [
        vec!["big", "Starting", "-", "0/2", "0", "Unschedulable"],
        vec!["oops", "Failed", "-", "0/2", "0", "FailedJobs"],
        vec!["run", "Running", "-", "2/2", "0"],
    ]
    .map(|r| r.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    // Until every row settles: the launcher runs, and the failed job's workers are gone (a
    // worker still being deleted counts as ready for a moment).
    let runs = eventually(
        "the launcher to run and the failed job's workers to go",
        DEADLINE,
        || async {
            let (code, out, err) = plugin(Identity::Admin, &["list", "-n", ns]);
            let mut rows = rows(&out);
            rows.sort();
            match code == 0 && rows == expected {
                true => Ok((out.clone(), rows)),
                false => Err(format!("{code} {out} {err}")),
            }
        },
    )
    .await;
    let (table, rows) = runs;
    assert_eq!(
        table
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NAME", "PHASE", "PROGRESS", "NODES", "RESTARTS", "AGE", "REASON"]
    );
    assert_eq!(rows, expected, "{table}");

    let (code, page, _) = plugin(Identity::Admin, &["describe", "oops", "-n", ns]);
    assert_eq!(code, 0);
    assert!(page.contains("Phase:      Failed"), "{page}");
    assert!(
        page.contains(
            "\nFailed (FailedJobs):\n  pod oops-launcher-0-0 failed: container node exited with code 3"
        ),
        "{page}"
    );
    assert!(page.contains("Runtime:    TrainingRuntime/fails"), "{page}");
    assert!(page.contains("\nEvents:\n  TYPE"), "{page}");
    let (_, page, _) = plugin(Identity::Admin, &["describe", "big", "-n", ns]);
    assert!(
        page.contains("\nWaiting (Unschedulable):\n  worker pod big-node-0-"),
        "{page}"
    );
    let (_, json_out, _) = plugin(Identity::Admin, &["describe", "run", "-n", ns, "-o", "json"]);
    let view: serde_json::Value = serde_json::from_str(&json_out).expect("JSON");
    assert_eq!(view["phase"], "Running");
    assert_eq!(view["pods"].as_array().map(Vec::len), Some(3));

    // wait: 0 once there, 1 when the job ended otherwise or time ran out.
    assert_eq!(
        plugin(Identity::Admin, &["wait", "run", "-n", ns, "--for", "running"]).0,
        0
    );
    let (code, _, err) = plugin(Identity::Admin, &["wait", "oops", "-n", ns, "--for", "complete"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: TrainJob oops ended Failed: FailedJobs pod oops-launcher-0-0 failed"),
        "{err}"
    );
    let (code, _, err) = plugin(
        Identity::Admin,
        &["wait", "run", "-n", ns, "--for", "complete", "--timeout", "2s"],
    );
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: timed out after 2s waiting for TrainJob run to be complete; it is Running\n"
    );
}

#[tokio::test]
async fn submit_suspend_resume_and_cancel_as_a_tenant_who_sees_nothing_else() {
    let (ns, c) = setup("plugin-tenant").await;
    let ns = ns.name.as_str();
    let (other, _) = setup("plugin-other").await;
    grant_edit(&c, ns, Identity::TenantA).await;
    runtime(&c, ns, "mpi-openmpi", "held", |rt| {
        pod_meta(rt, "launcher")["annotations"][HOLD] = json!("true");
    })
    .await;
    let file = std::env::temp_dir().join(format!("{ns}-job.yaml"));
    std::fs::write(
        &file,
        "apiVersion: trainer.kubeflow.org/v1alpha1\nkind: TrainJob\nmetadata:\n  name: mine\nspec:\n  runtimeRef: {kind: TrainingRuntime, name: held}\n",
    )
    .expect("job file");
    let path = file.display().to_string();
    // Eventually: the RoleBinding reaches the API server's authorizer a moment later.
    eventually("the tenant's submit", DEADLINE, || async {
        match plugin(Identity::TenantA, &["submit", "-f", &path, "-n", ns]) {
            (0, out, _) if out == "trainjob.trainer.kubeflow.org/mine created\n" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    wait_pods(&c, ns, "mine", &MINE_PODS).await;
    let (code, out, _) = plugin(Identity::TenantA, &["cancel", "mine", "--suspend", "-n", ns]);
    assert_eq!(
        (code, out.as_str()),
        (0, "trainjob.trainer.kubeflow.org/mine suspended\n")
    );
    wait_pods(&c, ns, "mine", &[]).await;
    let (code, out, _) = plugin(Identity::TenantA, &["resume", "mine", "-n", ns]);
    assert_eq!(
        (code, out.as_str()),
        (0, "trainjob.trainer.kubeflow.org/mine resumed\n")
    );
    wait_pods(&c, ns, "mine", &MINE_PODS).await;
    let (code, out, _) = plugin(Identity::TenantA, &["cancel", "mine", "-n", ns]);
    assert_eq!(
        (code, out.as_str()),
        (0, "trainjob.trainer.kubeflow.org/mine deleted\n")
    );
    eventually("the job and its pods to go", DEADLINE, || async {
        let job = Api::<TrainJob>::namespaced(c.clone(), ns)
            .get_opt("mine")
            .await
            .map_err(|e| e.to_string())?;
        match (job, pods_of(&c, ns, "mine").await.len()) {
            (None, 0) => Ok(()),
            (job, pods) => Err(format!("job {:?}, {pods} pods", job.is_some())),
        }
    })
    .await;
    std::fs::remove_file(&file).ok();

    // Another tenant's namespace: refused in one line, non-zero.
    let (code, out, err) = plugin(Identity::TenantA, &["list", "-n", &other.name]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with(&format!(
            "error: listing TrainJobs in namespace {}: forbidden: ",
            other.name
        )) && err.lines().count() == 1,
        "{err}"
    );
    // An unknown job, a bad flag, a cluster that is not there.
    let (code, _, err) = plugin(Identity::TenantA, &["describe", "nope", "-n", ns]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!(
            "error: TrainJob nope not found in namespace {ns}: `kubectl trainjob list -n {ns}` shows its jobs\n"
        )
    );
    let (code, _, err) = plugin(Identity::TenantA, &["wait", "x", "--for", "done"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value 'done' for '--for <UNTIL>'"), "{err}");
    let dead = std::env::temp_dir().join(format!("{ns}-dead.kubeconfig"));
    let config = std::fs::read_to_string(bed().kubeconfig_path(Identity::TenantA)).expect("kubeconfig");
    let server = bed().server().to_string();
    std::fs::write(&dead, config.replace(&server, "https://127.0.0.1:1")).expect("write");
    let (code, _, err) = plugin_with(&dead, &["list", "-n", ns]);
    std::fs::remove_file(&dead).ok();
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!(
            "error: listing TrainJobs in namespace {ns}: cannot reach the cluster"
        )) && err.trim_end().ends_with("check --kubeconfig and --context")
            && err.lines().count() == 1,
        "{err}"
    );
}
