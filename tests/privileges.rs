//! Least privilege, measured: with the API server's audit log recording every request of the
//! operator's identity, jobs go through everything the operator does (completion, failure with a
//! log read, suspension, deletion, quota, native, coscheduling and Volcano gangs, NetworkPolicies,
//! a job refused at admission, a pod name someone else took, a pod waiting for a volume claim), with the admission webhook serving and publishing its CA. Then no
//! request may have been refused (403), and every verb on every resource the shipped ClusterRole
//! grants must have been used: a right nobody uses is a right to remove.

use trainjob_testbed::support;

use std::collections::BTreeSet;

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::jobs::{
    EXIT, HOLD, annotate, create_job, install_gang_crd, pod_meta, pod_spec, runtime, setup, wait_condition,
    wait_pods,
};
use support::{DEADLINE, Identity, admitting_operator, bed, client, eventually};
use trainjob_operator::api::TrainJob;
use trainjob_operator::desired::gang::Plugin;

/// Rights used by API server admission rather than by a request: with
/// OwnerReferencesPermissionEnforcement (on in OpenShift, for example), setting
/// `blockOwnerDeletion` on a child needs `update` on the owner's finalizers.
const ADMISSION_ONLY: [(&str, &str, &str); 1] = [("trainer.kubeflow.org", "trainjobs/finalizers", "update")];

/// (API group, resource[/subresource], verb) for every right the ClusterRole grants.
fn granted() -> BTreeSet<(String, String, String)> {
    let path = trainjob_testbed::repo_root().join("config/rbac/role.yaml");
    let role: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).expect("role")).expect("yaml");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let mut rights = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    rights.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    rights
}

/// Every request of the operator in the audit log: (group, resource, verb) and refusals.
fn used() -> (BTreeSet<(String, String, String)>, Vec<String>) {
    let log = std::fs::read_to_string(bed().audit_log()).expect("audit log");
    let mut used = BTreeSet::new();
    let mut refused = Vec::new();
    for line in log.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        // The log also holds other users' pod writes.
        if event["user"]["username"] != Identity::Operator.user() {
            continue;
        }
        let object = &event["objectRef"];
        let Some(resource) = object["resource"].as_str() else {
            continue; // discovery, /version
        };
        let resource = match object["subresource"].as_str() {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_string(),
        };
        let group = object["apiGroup"].as_str().unwrap_or_default().to_string();
        let verb = event["verb"].as_str().unwrap_or_default().to_string();
        let code = &event["responseStatus"]["code"];
        if code == 403 {
            refused.push(format!("{verb} {group}/{resource} {}", object["name"]));
        }
        // A server-side apply that creates its object is authorized as a create as well.
        if verb == "patch" && code == 201 {
            used.insert((group.clone(), resource.clone(), "create".to_string()));
        }
        used.insert((group, resource, verb));
    }
    (used, refused)
}

/// Completes; its workers and Secret are deleted.
async fn completes() {
    let (ns, c) = setup("priv-complete").await;
    runtime(&c, &ns.name, "mpi-openmpi", "rt", |_| {}).await;
    let jobs = create_job(&c, &ns.name, "pi", "rt", json!({})).await;
    wait_condition(&jobs, "pi", "Complete").await;
    eventually("the Secret to go", DEADLINE, || async {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.clone(), &ns.name);
        match secrets.get_opt("pi-mpi-ssh-auth").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.is_ok())),
        }
    })
    .await;
}

/// A job `pi` whose launcher is held running, in a new namespace named after `prefix`, once its
/// pods exist (launcher first).
async fn running_job(
    prefix: &str,
) -> (
    support::TestNs,
    kube::Client,
    Vec<k8s_openapi::api::core::v1::Pod>,
) {
    let (ns, c) = setup(prefix).await;
    runtime(&c, &ns.name, "mpi-openmpi", "held", |rt| {
        pod_meta(rt, "launcher")["annotations"][HOLD] = json!("true");
    })
    .await;
    create_job(&c, &ns.name, "pi", "held", json!({})).await;
    let pods = wait_pods(
        &c,
        &ns.name,
        "pi",
        &["pi-launcher-0-0", "pi-node-0-0", "pi-node-0-1"],
    )
    .await;
    (ns, c, pods)
}

/// A pod of a running job reports progress: the status server reviews its token, reads the
/// pod it is bound to and writes `trainerStatus`.
async fn reports_progress() {
    use k8s_openapi::api::core::v1::Pod;
    use trainjob_operator::progress::{audience, path};
    let (ns, c, pods) = running_job("priv-progress").await;
    let launcher: &Pod = &pods[0];
    let ca = support::progress::job_ca(&c, &ns.name, "pi").await;
    let token = support::progress::token(&c, &ns.name, Some(launcher), &audience(&ns.name, "pi")).await;
    let port = admitting_operator().status_port.expect("status server");
    let body = json!({"trainerStatus": {"progressPercentage": 5}}).to_string();
    let reply =
        support::progress::post(port, &ca, &path(&ns.name, "pi"), Some(&token), body.as_bytes()).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

/// Someone changes a running job's hostfile and Service: the operator applies them back (they
/// are created at first, and patched only when they drift).
async fn drift_repaired() {
    use k8s_openapi::api::core::v1::{ConfigMap, Service};
    let (ns, c, _) = running_job("priv-drift").await;
    let configmaps: Api<ConfigMap> = Api::namespaced(c.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(c.clone(), &ns.name);
    let hostfile = |cm: ConfigMap| cm.data.and_then(|d| d.get("hostfile").cloned());
    let want = hostfile(configmaps.get("pi-mpi-hostfile").await.expect("hostfile"));
    let tamper = PatchParams::default();
    configmaps
        .patch(
            "pi-mpi-hostfile",
            &tamper,
            &Patch::Merge(json!({"data": {"hostfile": "x slots=1"}})),
        )
        .await
        .expect("changing the hostfile");
    services
        .patch(
            "pi",
            &tamper,
            &Patch::Merge(json!({"spec": {"publishNotReadyAddresses": false}})),
        )
        .await
        .expect("changing the Service");
    eventually(
        "the hostfile and Service to be applied back",
        DEADLINE,
        || async {
            let cm = configmaps
                .get("pi-mpi-hostfile")
                .await
                .map_err(|e| e.to_string())?;
            let svc = services.get("pi").await.map_err(|e| e.to_string())?;
            let published = svc.spec.and_then(|s| s.publish_not_ready_addresses);
            match (hostfile(cm), published) {
                (have, Some(true)) if have == want => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// A pod the job needs is taken by someone else's, which the operator reads to say whose.
async fn name_taken() {
    let (ns, c) = setup("priv-taken").await;
    runtime(&c, &ns.name, "mpi-openmpi", "rt", |_| {}).await;
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "pi-node-0-0"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }))
    .expect("pod");
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(c.clone(), &ns.name)
        .create(&PostParams::default(), &pod)
        .await
        .expect("someone else's pod");
    let jobs = create_job(&c, &ns.name, "pi", "rt", json!({})).await;
    wait_condition(&jobs, "pi", "Failed").await;
}

/// The workers wait for a volume claim that does not exist: the operator reads it to say so.
async fn claim_missing() {
    let (ns, c) = setup("priv-claim").await;
    runtime(&c, &ns.name, "mpi-openmpi", "rt", |spec| {
        pod_spec(spec, "node")["volumes"] =
            json!([{"name": "data", "persistentVolumeClaim": {"claimName": "absent"}}]);
    })
    .await;
    let jobs = create_job(&c, &ns.name, "pi", "rt", json!({})).await;
    eventually("the job to wait for its claim", DEADLINE, || async {
        let job = jobs.get("pi").await.map_err(|e| e.to_string())?;
        let conditions = job.status.map(|s| s.conditions).unwrap_or_default();
        match conditions
            .iter()
            .any(|c| c.reason == "VolumeClaimNotBound" && c.message.contains("(not found)"))
        {
            true => Ok(()),
            false => Err(format!("{conditions:?}")),
        }
    })
    .await;
}

/// A runtime's volumeClaimPolicies: the claim is created, and read while the pods wait for it.
async fn claim_made() {
    let (ns, c) = setup("priv-pvc").await;
    runtime(&c, &ns.name, "mpi-openmpi-initializers", "rt", |spec| {
        spec["template"]["spec"]["volumeClaimPolicies"][0]["templates"][0]["spec"]["storageClassName"] =
            json!("no-such-class");
    })
    .await;
    let initializer =
        json!({"dataset": {"storageUri": "s3://data/x"}, "model": {"storageUri": "s3://data/y"}});
    let jobs = create_job(&c, &ns.name, "pi", "rt", json!({"initializer": initializer})).await;
    eventually("the job to wait for the claim it made", DEADLINE, || async {
        let job = jobs.get("pi").await.map_err(|e| e.to_string())?;
        let conditions = job.status.map(|s| s.conditions).unwrap_or_default();
        match conditions
            .iter()
            .any(|c| c.reason == "VolumeClaimNotBound" && c.message.contains("initializer-pi"))
        {
            true => Ok(()),
            false => Err(format!("{conditions:?}")),
        }
    })
    .await;
}

/// The launcher fails: its log is read; the namespace has a ResourceQuota.
async fn fails_under_quota() {
    let (ns, c) = setup("priv-fail").await;
    let quota: k8s_openapi::api::core::v1::ResourceQuota =
        serde_json::from_value(json!({"metadata": {"name": "q"}, "spec": {"hard": {"pods": "20"}}}))
            .expect("quota");
    Api::namespaced(c.clone(), &ns.name)
        .create(&PostParams::default(), &quota)
        .await
        .expect("quota");
    runtime(&c, &ns.name, "mpi-openmpi", "rt", |spec| {
        pod_meta(spec, "launcher")["annotations"][EXIT] = json!("3");
    })
    .await;
    let jobs = create_job(&c, &ns.name, "pi", "rt", json!({})).await;
    wait_condition(&jobs, "pi", "Failed").await;
}

/// Suspended, resumed, then deleted while running.
async fn suspended_resumed_deleted() {
    let (ns, c) = setup("priv-suspend").await;
    runtime(&c, &ns.name, "mpi-openmpi", "held", |spec| {
        pod_meta(spec, "launcher")["annotations"][HOLD] = json!("true");
    })
    .await;
    let jobs = create_job(&c, &ns.name, "pi", "held", json!({})).await;
    wait_pods(
        &c,
        &ns.name,
        "pi",
        &["pi-launcher-0-0", "pi-node-0-0", "pi-node-0-1"],
    )
    .await;
    for suspend in [true, false] {
        jobs.patch(
            "pi",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": suspend}})),
        )
        .await
        .expect("suspend");
        let want = if suspend { "Suspended" } else { "Running" };
        eventually(want, DEADLINE, || async {
            let job = jobs.get("pi").await.map_err(|e| e.to_string())?;
            let phase = job.status.as_ref().and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == "Suspended")
                    .map(|c| c.status.clone())
            });
            match (suspend, phase.as_deref()) {
                (true, Some("True")) | (false, Some("False")) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    // Not counting the suspended run's pods still on their way out.
    eventually("the resumed job's pods", DEADLINE, || async {
        let pods = support::jobs::pods_of(&c, &ns.name, "pi").await;
        let live: Vec<_> = pods
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let names = support::jobs::names(&live);
        if names == ["pi-launcher-0-0", "pi-node-0-0", "pi-node-0-1"] {
            return Ok(());
        }
        let j = jobs.get("pi").await.map_err(|e| e.to_string())?;
        let conditions: Vec<String> = j
            .status
            .iter()
            .flat_map(|s| s.conditions.iter())
            .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
            .collect();
        Err(format!("{names:?} {conditions:?}"))
    })
    .await;
    annotate(&c, &ns.name, "pi-node-0-0", EXIT, Some("1")).await;
    jobs.delete("pi", &DeleteParams::foreground())
        .await
        .expect("delete");
}

/// Every gang policy; the native one waits (it cannot fit), so its PodGroup is read.
async fn gangs() {
    let (ns, c) = setup("priv-gang").await;
    let admin = client(Identity::Admin).await;
    install_gang_crd(&admin, Plugin::Coscheduling).await;
    install_gang_crd(&admin, Plugin::Volcano).await;
    for (name, policy) in [
        ("native", json!({"workload": {}})),
        ("cosched", json!({"coscheduling": {}})),
        ("volcano", json!({"volcano": {}})),
    ] {
        runtime(&c, &ns.name, "mpi-openmpi", name, |spec| {
            spec["podGroupPolicy"] = policy
        })
        .await;
    }
    let huge = json!({"trainer": {"numNodes": 5, "resourcesPerNode": {"requests": {"cpu": "30"}}}});
    let jobs = create_job(&c, &ns.name, "native", "native", huge).await;
    let small = json!({"trainer": {"numNodes": 2, "resourcesPerNode": {"requests": {"cpu": "10m"}}}});
    create_job(&c, &ns.name, "cosched", "cosched", small.clone()).await;
    create_job(&c, &ns.name, "volcano", "volcano", small).await;
    eventually(
        "the native gang to wait, in the PodGroup's words",
        DEADLINE,
        || async {
            let job = jobs.get("native").await.map_err(|e| e.to_string())?;
            let waiting = job
                .status
                .iter()
                .flat_map(|s| s.conditions.iter())
                .any(|c| c.type_ == "GangScheduled" && c.message.contains("(PodGroup: Unschedulable)"));
            waiting.then_some(()).ok_or_else(|| format!("{:?}", job.status))
        },
    )
    .await;
    // The default scheduler runs the coscheduling job to the end; nothing schedules Volcano's.
    wait_condition(&jobs, "cosched", "Complete").await;
    wait_pods(&c, &ns.name, "volcano", &["volcano-node-0-0", "volcano-node-0-1"]).await;
}

/// A missing runtime: refused at admission, after the webhook looked for it.
/// Runtimes come from a watch cache; one it does not hold (such as a missing one) is read from
/// the API server, so the `get` rights are used here.
async fn missing_runtime() {
    let (ns, c) = setup("priv-missing").await;
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), &ns.name);
    for (kind, want) in [
        (
            "ClusterTrainingRuntime",
            "ClusterTrainingRuntime \"no-such-runtime\" not found",
        ),
        ("TrainingRuntime", "TrainingRuntime \"no-such-runtime\" not found"),
    ] {
        let job: TrainJob = serde_json::from_value(json!({
            "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": "pi"},
            "spec": {"runtimeRef": {"name": "no-such-runtime", "kind": kind}},
        }))
        .expect("job");
        let err = jobs
            .create(&PostParams::default(), &job)
            .await
            .expect_err("refused");
        assert!(err.to_string().contains(want), "{err}");
    }
}

#[tokio::test]
async fn the_operator_uses_every_right_it_holds_and_no_request_is_refused() {
    bed();
    // With admission on, as installed: the webhook's reads and its CA publishing count too.
    admitting_operator();
    futures::join!(
        completes(),
        fails_under_quota(),
        suspended_resumed_deleted(),
        gangs(),
        missing_runtime(),
        name_taken(),
        claim_missing(),
        claim_made(),
        reports_progress(),
        drift_repaired()
    );

    let (used, refused) = used();
    assert!(refused.is_empty(), "requests refused with 403: {refused:#?}");
    let unused: Vec<_> = granted()
        .into_iter()
        .filter(|right| !used.contains(right))
        .filter(|(g, r, v)| !ADMISSION_ONLY.contains(&(g.as_str(), r.as_str(), v.as_str())))
        .collect();
    assert!(
        unused.is_empty(),
        "the ClusterRole grants rights the operator never used (remove them): {unused:#?}\nused: {used:#?}"
    );
}
