//! A restarted operator picks up where the last one stopped: no duplicate pods, no new SSH key.
//! The tests run one at a time: each starts and stops operators that watch every namespace.

use trainjob_testbed::support;

use std::collections::BTreeSet;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
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

/// The worker the first operator may not create: the API server refuses it (a
/// ValidatingAdmissionPolicy) until the test lifts the ban. The operator creates a job's pods
/// in batches of 1, 2, 4, ... in index order and stops at a batch with a failed create, so it
/// makes workers 0 to 4 and 6 and never 5 or 7, however often it retries: killed at any moment
/// after its refusal, it dies mid-creation.
const HELD_BACK: &str = "pi-node-0-5";

/// Bans creating pod [`HELD_BACK`] in `ns` until [`lift`]; returns once the API server enforces it.
async fn hold_back(c: &kube::Client, ns: &str) {
    let name = format!("hold-back-{ns}");
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["pods"]}]},
            // Forbidden (403), which the operator retries, rather than Invalid (422), which
            // would fail the job.
            "validations": [{"expression": format!("object.metadata.name != '{HELD_BACK}'"),
                "message": "held back by the test", "reason": "Forbidden"}],
        },
    }))
    .expect("policy");
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}},
    }))
    .expect("binding");
    Api::<ValidatingAdmissionPolicy>::all(c.clone())
        .create(&PostParams::default(), &policy)
        .await
        .expect("policy");
    Api::<ValidatingAdmissionPolicyBinding>::all(c.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("binding");
    eventually("the API server to refuse the held-back pod", DEADLINE, || async {
        match probe(c, ns).await {
            Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("held back by the test") => {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// Lifts the ban of [`hold_back`]; returns once the API server admits the pod again.
async fn lift(c: &kube::Client, ns: &str) {
    let name = format!("hold-back-{ns}");
    Api::<ValidatingAdmissionPolicyBinding>::all(c.clone())
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete the binding");
    Api::<ValidatingAdmissionPolicy>::all(c.clone())
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete the policy");
    eventually(
        "the API server to admit the held-back pod again",
        DEADLINE,
        || async { probe(c, ns).await.map(|_| ()).map_err(|e| format!("{e:?}")) },
    )
    .await;
}

/// A dry-run create of a pod named [`HELD_BACK`] in `ns`.
async fn probe(c: &kube::Client, ns: &str) -> Result<Pod, kube::Error> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": HELD_BACK},
        "spec": {"containers": [{"name": "probe", "image": "busybox"}]},
    }))
    .expect("pod");
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    Api::<Pod>::namespaced(c.clone(), ns).create(&dry_run, &pod).await
}

/// The pods of `ns` that the operator `identity` asked to create, from the API server's audit
/// log: (name, response code).
fn pod_creates(ns: &str, identity: &str) -> Vec<(String, u64)> {
    let audit = std::fs::read_to_string(bed().audit_log()).expect("the audit log");
    let agent = support::leaders::user_agent(identity);
    audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            e["stage"] == "ResponseComplete"
                && e["verb"] == "create"
                && e["userAgent"] == agent.as_str()
                && e["objectRef"]["resource"] == "pods"
                && e["objectRef"]["subresource"].is_null()
                && e["objectRef"]["namespace"] == ns
        })
        .filter_map(|e| {
            let name = e["objectRef"]["name"]
                .as_str()
                .or_else(|| e["requestObject"]["metadata"]["name"].as_str())?;
            Some((name.to_string(), e["responseStatus"]["code"].as_u64()?))
        })
        .collect()
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
    hold_back(&c, &ns.name).await;
    jobs.create(&PostParams::default(), &job).await.expect("job");

    // The first operator gets as far as the held-back worker, and is killed there: some of the
    // job's pods exist, not all.
    let first = Operator::start();
    let first_id = first.identity.clone();
    eventually(
        "the first operator to be refused the held-back worker",
        DEADLINE,
        || async {
            let creates = pod_creates(&ns.name, &first_id);
            let refused = creates
                .iter()
                .any(|(name, code)| name == HELD_BACK && *code == 403);
            let live = live_pods(&c, &ns.name).await;
            if refused && !live.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "creates {creates:?}, live {:?}",
                    support::jobs::names(&live)
                ))
            }
        },
    )
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
    let workers: Vec<String> = (0..8).map(|i| format!("pi-node-0-{i}")).collect();
    let missing: BTreeSet<String> = workers
        .iter()
        .filter(|w| survivors.iter().all(|(name, _)| name != *w))
        .cloned()
        .collect();
    eprintln!(
        "killed the operator mid-creation, with {} of 8 worker pods created: {:?}; missing {missing:?}",
        survivors.len(),
        survivors.iter().map(|(name, _)| name).collect::<Vec<_>>()
    );
    assert!(
        !survivors.is_empty() && missing.contains(HELD_BACK),
        "the kill landed mid-creation: {survivors:?}"
    );

    // A second operator finishes the job: the missing workers, then (once Ready) the launcher.
    lift(&c, &ns.name).await;
    let second = Operator::start();
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
    // The second operator created the missing workers, each once, and tried no other.
    let mut created: Vec<String> = pod_creates(&ns.name, &second.identity)
        .into_iter()
        .map(|(name, code)| format!("{name} {code}"))
        .collect();
    created.sort();
    let want: Vec<String> = missing.iter().map(|name| format!("{name} 201")).collect();
    assert_eq!(created, want, "the second operator's pod creates");
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
