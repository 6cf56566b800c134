//! TrainJob helpers shared by the operator test binaries: runtimes, jobs, pods, conditions and
//! Events, each waited for with a deadline.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use trainjob_operator::api::{TrainJob, TrainingRuntime};

use super::{DEADLINE, Identity, TestNs, client, eventually, operator};

/// kwok keeps a pod with this annotation Running until it is removed.
pub const HOLD: &str = "kwok.trainjob.test/hold";
/// kwok ends a pod with this annotation with the exit code it names.
pub const EXIT: &str = "kwok.trainjob.test/exit-code";

/// A namespaced copy of a shipped runtime (`config/runtimes/<shipped>.yaml`), changed by `tweak`.
pub async fn runtime(c: &Client, ns: &str, shipped: &str, name: &str, tweak: impl FnOnce(&mut Value)) {
    let path = crate::repo_root().join(format!("config/runtimes/{shipped}.yaml"));
    let mut rt: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(path).expect("runtime file")).expect("yaml");
    rt["kind"] = json!("TrainingRuntime");
    rt["metadata"] = json!({"name": name, "namespace": ns});
    tweak(&mut rt["spec"]);
    let rt: TrainingRuntime = serde_json::from_value(rt).expect("runtime");
    Api::<TrainingRuntime>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &rt)
        .await
        .expect("create runtime");
}

/// The pod template of replicated job `rjob` in a runtime spec.
pub fn pod_template<'a>(spec: &'a mut Value, rjob: &str) -> &'a mut Value {
    let jobs = spec["template"]["spec"]["replicatedJobs"]
        .as_array_mut()
        .expect("replicatedJobs");
    let job = jobs
        .iter_mut()
        .find(|j| j["name"] == rjob)
        .expect("replicated job");
    &mut job["template"]["spec"]["template"]
}

/// The pod spec of replicated job `rjob` in a runtime spec.
pub fn pod_spec<'a>(spec: &'a mut Value, rjob: &str) -> &'a mut Value {
    &mut pod_template(spec, rjob)["spec"]
}

/// Pod template metadata of replicated job `rjob` in a runtime spec.
pub fn pod_meta<'a>(spec: &'a mut Value, rjob: &str) -> &'a mut Value {
    let template = pod_template(spec, rjob);
    if template.get("metadata").is_none() {
        template["metadata"] = json!({"annotations": {}});
    }
    &mut template["metadata"]
}

pub async fn create_job(c: &Client, ns: &str, name: &str, runtime: &str, spec: Value) -> Api<TrainJob> {
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), ns);
    let mut spec = spec;
    spec["runtimeRef"] = json!({"kind": "TrainingRuntime", "name": runtime});
    let job: TrainJob = serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    }))
    .expect("job");
    jobs.create(&PostParams::default(), &job)
        .await
        .expect("create job");
    jobs
}

pub async fn pods_of(c: &Client, ns: &str, job: &str) -> Vec<Pod> {
    let lp = ListParams::default().labels(&format!("trainer.kubeflow.org/trainjob-name={job}"));
    let mut pods = Api::<Pod>::namespaced(c.clone(), ns)
        .list(&lp)
        .await
        .expect("list pods")
        .items;
    pods.sort_by_key(|p| p.name_any());
    pods
}

/// Waits until the operator has created at least one of `job`'s pods.
pub async fn wait_first_pod(c: &Client, ns: &str, job: &str) {
    eventually(&format!("the first pod of {job}"), DEADLINE, || async {
        if pods_of(c, ns, job).await.is_empty() {
            Err("none yet".to_string())
        } else {
            Ok(())
        }
    })
    .await
}

pub fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter().map(|p| p.name_any()).collect()
}

/// Waits until the job's pods (not being deleted) have exactly `want` names.
pub async fn wait_pods(c: &Client, ns: &str, job: &str, want: &[&str]) -> Vec<Pod> {
    eventually(&format!("pods {want:?}"), DEADLINE, || async {
        let pods: Vec<Pod> = pods_of(c, ns, job)
            .await
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        if names(&pods) == want {
            Ok(pods)
        } else {
            Err(format!("{:?}", names(&pods)))
        }
    })
    .await
}

/// Waits for condition `type_` to be True and returns it.
pub async fn wait_condition(
    jobs: &Api<TrainJob>,
    name: &str,
    type_: &str,
) -> (
    TrainJob,
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition,
) {
    eventually(&format!("condition {type_} on {name}"), DEADLINE, || async {
        let job = jobs.get(name).await.map_err(|e| e.to_string())?;
        let cond = job.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == "True")
                .cloned()
        });
        match cond {
            Some(c) => Ok((job, c)),
            None => Err(format!("{:?}", job.status)),
        }
    })
    .await
}

pub async fn ungate(c: &Client, ns: &str, pods: &[Pod]) {
    let api: Api<Pod> = Api::namespaced(c.clone(), ns);
    for pod in pods {
        let patch = json!({"spec": {"schedulingGates": null}});
        api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("ungate");
    }
}

pub async fn annotate(c: &Client, ns: &str, pod: &str, key: &str, value: Option<&str>) {
    let patch = json!({"metadata": {"annotations": {key: value}}});
    Api::<Pod>::namespaced(c.clone(), ns)
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
}

/// Every Event on `job` as (reason, note).
pub async fn events_for(c: &Client, ns: &str, job: &str) -> Vec<(String, String)> {
    // Read through core/v1, as `kubectl describe` and the Kubeflow SDK read them: there an Event
    // of the operator must carry its first time, or the SDK's get_job_events skips it.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(c.clone(), ns);
    let list = events.list(&Default::default()).await.expect("events");
    list.items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(job))
        .map(|e| {
            let reason = e.reason.unwrap_or_default();
            assert!(
                e.first_timestamp.is_some() && e.count.is_some_and(|n| n >= 1),
                "Event {reason} on {job} has no firstTimestamp or count in core/v1"
            );
            (reason, e.message.unwrap_or_default())
        })
        .collect()
}

/// A fresh namespace and an admin client, with the shared operator running.
pub async fn setup(prefix: &str) -> (TestNs, Client) {
    operator();
    (TestNs::new(prefix).await, client(Identity::Admin).await)
}

/// Waits until an Event on `job` matches `wanted` (Events are recorded after the status they
/// describe is written) and returns every Event of the job.
pub async fn wait_event(
    c: &Client,
    ns: &str,
    job: &str,
    what: &str,
    wanted: impl Fn(&str, &str) -> bool,
) -> Vec<(String, String)> {
    eventually(&format!("Event {what} on {job}"), DEADLINE, || async {
        let events = events_for(c, ns, job).await;
        if events.iter().any(|(r, n)| wanted(r, n)) {
            Ok(events)
        } else {
            Err(format!("{events:?}"))
        }
    })
    .await
}

/// The pods of a running 2-node job `pi`.
pub const PI_PODS: [&str; 3] = ["pi-launcher-0-0", "pi-node-0-0", "pi-node-0-1"];

/// A namespace with a 2-node job `pi` whose pods all exist, on an OpenMPI runtime (changed by
/// `tweak`) whose launcher stays Running until the test releases it.
pub async fn running(
    prefix: &str,
    tweak: impl FnOnce(&mut Value),
    spec: Value,
) -> (TestNs, Client, Api<TrainJob>) {
    let (ns, c) = setup(prefix).await;
    runtime(&c, &ns.name, "mpi-openmpi", "held", |rt| {
        pod_meta(rt, "launcher")["annotations"][HOLD] = json!("true");
        tweak(rt);
    })
    .await;
    let jobs = create_job(&c, &ns.name, "pi", "held", spec).await;
    wait_pods(&c, &ns.name, "pi", &PI_PODS).await;
    (ns, c, jobs)
}

/// Installs the scheduler's own PodGroup CRD and waits until it is served. `make bed` fetches
/// and generates the CRDs at pinned versions into the cache (`hack/gang-crds.sh`); the tests only
/// read them there.
pub async fn install_gang_crd(c: &Client, plugin: trainjob_operator::desired::gang::Plugin) {
    let script = crate::repo_root().join("hack/gang-crds.sh");
    let out = std::process::Command::new(&script)
        .arg("--dir")
        .output()
        .expect("running hack/gang-crds.sh --dir");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = std::path::Path::new(String::from_utf8_lossy(&out.stdout).trim())
        .join(format!("{}.yaml", plugin.policy()));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "the {} PodGroup CRD is not in the cache ({}: {e}): run `make bed` (or hack/gang-crds.sh) to fetch and generate the gang-scheduling CRDs",
            plugin.policy(),
            path.display()
        )
    });
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_saphyr::from_str(&text).expect("CRD");
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(c.clone());
    match crds.create(&PostParams::default(), &crd).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("installing the {} CRD: {e}", plugin.policy()),
    }
    eventually(
        &format!("the {} PodGroup CRD to be established", plugin.policy()),
        DEADLINE,
        || async {
            let crd = crds.get(&crd.name_any()).await.map_err(|e| e.to_string())?;
            let established = crd
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            established
                .then_some(())
                .ok_or_else(|| "not established".to_string())
        },
    )
    .await;
}

/// Waits up to `deadline` until job `name`'s `Stalled` condition has `status` and `reason` and a
/// message containing `words`, and returns it.
pub async fn wait_stalled(
    jobs: &Api<TrainJob>,
    name: &str,
    (status, reason, words): (&str, &str, &str),
    deadline: std::time::Duration,
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let what = format!("Stalled={status} ({reason}: {words:?}) on {name}");
    eventually(&what, deadline, || async {
        let job = jobs.get(name).await.map_err(|e| e.to_string())?;
        let conditions = job.status.map(|s| s.conditions).unwrap_or_default();
        let wanted = |c: &&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition| {
            c.type_ == "Stalled" && c.status == status && c.reason == reason && c.message.contains(words)
        };
        conditions
            .iter()
            .find(wanted)
            .cloned()
            .ok_or_else(|| format!("{conditions:?}"))
    })
    .await
}

/// Binds `who` to the `edit` ClusterRole in `ns` (which the shipped user roles extend to
/// TrainJobs), as a namespace admin would for a data scientist. The binding reaches the API
/// server's authorizer a moment later: callers retry their first request.
pub async fn grant_edit(c: &Client, ns: &str, who: Identity) {
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{}-edit", who.user().replace(':', "-")), "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": who.user()}],
    }))
    .expect("binding");
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind");
}
