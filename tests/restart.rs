//! A restarted operator picks up where the last one stopped: no duplicate pods, no new SSH key.
//! The tests run one at a time: each starts and stops operators that watch every namespace.

use trainjob_testbed::support;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::jobs::{HOLD, PI_PODS, create_job, pod_meta, runtime, wait_condition, wait_pods};
use support::{DEADLINE, Identity, Operator, TestNs, bed, client, eventually};
use trainjob_operator::api::{TrainJob, TrainingRuntime};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn live_pods(c: &kube::Client, ns: &str) -> Vec<Pod> {
    let lp = ListParams::default().labels("trainer.kubeflow.org/trainjob-name=pi");
    let mut pods: Vec<Pod> = Api::<Pod>::namespaced(c.clone(), ns)
        .list(&lp)
        .await
        .expect("pods")
        .items;
    pods.retain(|p| p.metadata.deletion_timestamp.is_none());
    pods.sort_by_key(|p| p.name_any());
    pods
}

#[tokio::test]
async fn killing_the_operator_mid_creation_leaves_exactly_the_right_objects() {
    let _serial = SERIAL.lock().await;
    bed().apply_kustomization("config/runtimes").expect("runtimes");
    let ns = TestNs::new("restart").await;
    let c = client(Identity::Admin).await;

    // Workers gated (never Ready until released), launcher held Running until released.
    let path = trainjob_testbed::repo_root().join("config/runtimes/mpi-openmpi.yaml");
    let mut rt: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(path).expect("file")).expect("yaml");
    rt["kind"] = json!("TrainingRuntime");
    rt["metadata"] = json!({"name": "held", "namespace": ns.name});
    for job in rt["spec"]["template"]["spec"]["replicatedJobs"]
        .as_array_mut()
        .expect("jobs")
    {
        let is_node = job["name"] == "node";
        let template = &mut job["template"]["spec"]["template"];
        if is_node {
            template["spec"]["schedulingGates"] = json!([{"name": "trainjob.test/hold"}]);
        } else {
            template["metadata"] = json!({"annotations": {"kwok.trainjob.test/hold": "true"}});
        }
    }
    let rt: TrainingRuntime = serde_json::from_value(rt).expect("runtime");
    Api::<TrainingRuntime>::namespaced(c.clone(), &ns.name)
        .create(&PostParams::default(), &rt)
        .await
        .expect("runtime");
    let job: TrainJob = serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": "pi", "namespace": ns.name},
        "spec": {"runtimeRef": {"kind": "TrainingRuntime", "name": "held"}, "trainer": {"numNodes": 8}},
    }))
    .expect("job");
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), &ns.name);
    jobs.create(&PostParams::default(), &job).await.expect("job");

    // Kill the first operator as soon as it has created its first pod (wherever that lands).
    let first = Operator::start();
    eventually("the first worker pod", DEADLINE, || async {
        if live_pods(&c, &ns.name).await.is_empty() {
            Err("none yet".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    first.kill();
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns.name);
    let key = secrets
        .get("pi-mpi-ssh-auth")
        .await
        .expect("the Secret is created before any pod");
    let survivors: Vec<(String, String)> = live_pods(&c, &ns.name)
        .await
        .iter()
        .map(|p| (p.name_any(), p.uid().unwrap_or_default()))
        .collect();
    eprintln!(
        "killed the operator with {} of 8 worker pods created",
        survivors.len()
    );

    // A second operator finishes the job: the missing workers, then (once Ready) the launcher.
    let second = Operator::start();
    let workers: Vec<String> = (0..8).map(|i| format!("pi-node-0-{i}")).collect();
    let pods = eventually("all eight workers", DEADLINE, || async {
        let pods = live_pods(&c, &ns.name).await;
        let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
        if names == workers {
            Ok(pods)
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;
    for (name, uid) in &survivors {
        let now = pods
            .iter()
            .find(|p| &p.name_any() == name)
            .and_then(|p| p.uid())
            .unwrap_or_default();
        assert_eq!(&now, uid, "{name} was kept, not recreated");
    }
    let api: Api<Pod> = Api::namespaced(c.clone(), &ns.name);
    for pod in &pods {
        api.patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"schedulingGates": null}})),
        )
        .await
        .expect("ungate");
    }
    let mut want = vec!["pi-launcher-0-0".to_string()];
    want.extend(workers.iter().cloned());
    eventually("the launcher after all workers are Ready", DEADLINE, || async {
        let names: Vec<String> = live_pods(&c, &ns.name)
            .await
            .iter()
            .map(|p| p.name_any())
            .collect();
        if names == want {
            Ok(())
        } else {
            Err(format!("{names:?}"))
        }
    })
    .await;

    // Restart the operator once more while everything runs: nothing changes.
    second.stop();
    let third = Operator::start();
    let again = secrets.get("pi-mpi-ssh-auth").await.expect("secret");
    assert_eq!(
        (again.uid(), again.data.clone()),
        (key.uid(), key.data.clone()),
        "the SSH key was never regenerated"
    );
    assert_eq!(
        secrets
            .list(&Default::default())
            .await
            .expect("secrets")
            .items
            .len(),
        1
    );
    api.patch(
        "pi-launcher-0-0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"kwok.trainjob.test/hold": null}}})),
    )
    .await
    .expect("release launcher");
    eventually("Complete", DEADLINE, || async {
        let job = jobs.get("pi").await.map_err(|e| e.to_string())?;
        let done = job.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Complete" && c.status == "True")
        });
        if done {
            Ok(())
        } else {
            Err(format!("{:?}", job.status))
        }
    })
    .await;
    // The key goes with completion.
    eventually("the SSH Secret to be deleted", DEADLINE, || async {
        let left = secrets
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        left.items
            .is_empty()
            .then_some(())
            .ok_or_else(|| format!("{}", left.items.len()))
    })
    .await;
    third.stop();

    let cms: Vec<String> = Api::<ConfigMap>::namespaced(c.clone(), &ns.name)
        .list(&Default::default())
        .await
        .expect("cms")
        .items
        .iter()
        .map(|c| c.name_any())
        .filter(|n| n.starts_with("pi-"))
        .collect();
    assert_eq!(cms, ["pi-mpi-hostfile", "pi-runtime-snapshot"]);
    assert_eq!(
        Api::<Service>::namespaced(c.clone(), &ns.name)
            .list(&Default::default())
            .await
            .expect("svcs")
            .items
            .len(),
        1
    );
    let status = jobs.get("pi").await.expect("job").status.expect("status");
    assert_eq!(status.restarts, None, "no restart was needed");
}

/// Someone deletes a running job's SSH Secret while no operator runs. The next one (a restart, a
/// new leader) fails the job and says why, rather than making a second key that the running
/// pods would never get.
#[tokio::test]
async fn a_running_job_whose_secret_was_deleted_fails_rather_than_getting_a_second_key() {
    let _serial = SERIAL.lock().await;
    let ns = TestNs::new("keylost").await;
    let c = client(Identity::Admin).await;
    runtime(&c, &ns.name, "mpi-openmpi", "held", |rt| {
        pod_meta(rt, "launcher")["annotations"][HOLD] = json!("true");
    })
    .await;
    let first = Operator::start();
    let jobs = create_job(&c, &ns.name, "pi", "held", json!({"trainer": {"numNodes": 2}})).await;
    wait_pods(&c, &ns.name, "pi", &PI_PODS).await;
    first.stop();
    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns.name);
    secrets
        .delete("pi-mpi-ssh-auth", &Default::default())
        .await
        .expect("delete the Secret");

    let second = Operator::start();
    let (_, failed) = wait_condition(&jobs, "pi", "Failed").await;
    assert_eq!(failed.reason, "SSHSecretDeleted", "{failed:?}");
    assert!(
        failed
            .message
            .contains("the SSH Secret pi-mpi-ssh-auth was deleted while the job's pods ran"),
        "{failed:?}"
    );
    wait_pods(&c, &ns.name, "pi", &[]).await;
    assert!(
        secrets.get_opt("pi-mpi-ssh-auth").await.expect("get").is_none(),
        "no second key"
    );
    second.stop();
}
