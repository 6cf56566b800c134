//! The behaviour of Kubernetes itself that the operator relies on, checked against the real test
//! bed: CRD installation and validation, the status subresource, kwok pod lifecycles, garbage
//! collection, and RBAC for the operator and for tenants.

use trainjob_testbed::support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use support::{DEADLINE, Identity, TestNs, bed, client, eventually};
use trainjob_operator::api::{TrainJob, TrainingRuntime};

fn trainjob(ns: &str, name: &str, trainer: serde_json::Value) -> TrainJob {
    serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"runtimeRef": {"name": "mpi-openmpi"}, "trainer": trainer},
    }))
    .expect("test TrainJob")
}

/// The API server's message for creating `object`, which the test expects to be refused.
async fn rejection<K>(api: &Api<K>, object: &K) -> String
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(created) => panic!("expected the API server to refuse {}", created.name_any()),
        Err(kube::Error::Api(status)) => {
            assert_eq!(
                status.code, 422,
                "refusals of invalid objects are 422 Unprocessable: {status:?}"
            );
            status.message
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn crds_are_installed_server_side_and_established() {
    let crds: Api<CustomResourceDefinition> = Api::all(client(Identity::Admin).await);
    for name in [
        "trainjobs.trainer.kubeflow.org",
        "trainingruntimes.trainer.kubeflow.org",
        "clustertrainingruntimes.trainer.kubeflow.org",
    ] {
        let crd = crds.get(name).await.expect("CRD exists");
        let established = crd
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        assert!(established, "{name} is not Established");
        let applied = crd
            .managed_fields()
            .iter()
            .any(|m| m.operation.as_deref() == Some("Apply"));
        assert!(applied, "{name} was not installed with server-side apply");
    }
}

#[tokio::test]
async fn server_cel_rules_refuse_bad_objects_with_our_messages() {
    let ns = TestNs::new("cel").await;
    let jobs: Api<TrainJob> = Api::namespaced(client(Identity::Admin).await, &ns.name);

    let msg = rejection(&jobs, &trainjob(&ns.name, "zero-nodes", json!({"numNodes": 0}))).await;
    assert!(msg.contains("spec.trainer.numNodes"), "{msg}");
    assert!(msg.contains("numNodes must be at least 1"), "{msg}");

    let msg = rejection(&jobs, &trainjob(&ns.name, "dotted.name", json!({}))).await;
    assert!(
        msg.contains("metadata.name must match RFC 1035 DNS label format"),
        "{msg}"
    );

    let mut foreign = trainjob(&ns.name, "foreign", json!({}));
    foreign.spec.managed_by = Some("example.com/other".into());
    let msg = rejection(&jobs, &foreign).await;
    assert!(msg.contains("spec.managedBy"), "{msg}");
    assert!(
        msg.contains("ManagedBy must be trainer.kubeflow.org/trainjob-controller"),
        "{msg}"
    );

    // Valid objects pass, and immutable fields then stay put.
    let job = jobs
        .create(
            &PostParams::default(),
            &trainjob(&ns.name, "good", json!({"numNodes": 2})),
        )
        .await
        .expect("valid job");
    assert_eq!(
        job.spec.runtime_ref.kind.as_deref(),
        Some("ClusterTrainingRuntime"),
        "server applies defaults"
    );
    assert_eq!(job.spec.suspend, Some(false));
    let change = Patch::Merge(json!({"spec": {"trainer": {"numNodes": 3}}}));
    let err = jobs
        .patch("good", &PatchParams::default(), &change)
        .await
        .expect_err("trainer is immutable");
    assert!(err.to_string().contains("field is immutable"), "{err}");
    let suspend = Patch::Merge(json!({"spec": {"suspend": true}}));
    jobs.patch("good", &PatchParams::default(), &suspend)
        .await
        .expect("suspend stays mutable");

    let runtimes: Api<TrainingRuntime> = Api::namespaced(client(Identity::Admin).await, &ns.name);
    let two_policies: TrainingRuntime = serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainingRuntime",
        "metadata": {"name": "two", "namespace": ns.name},
        "spec": {"mlPolicy": {"mpi": {}, "torch": {}}},
    }))
    .expect("runtime");
    let msg = rejection(&runtimes, &two_policies).await;
    assert!(msg.contains("Only one of the policy can be configured"), "{msg}");
}

#[tokio::test]
async fn bad_manifests_get_messages_that_name_the_field() {
    let ns = TestNs::new("badinput").await;
    let apply = |spec: &str| {
        let manifest = format!(
            "apiVersion: trainer.kubeflow.org/v1alpha1\nkind: TrainJob\nmetadata: {{name: bad, namespace: {}}}\nspec:\n{spec}",
            ns.name
        );
        bed()
            .kubectl_as(Identity::Admin, &["apply", "-f", "-"], &manifest)
            .expect_err("kubectl must refuse it")
            .to_string()
    };
    let unknown = apply("  runtimeRef: {name: mpi-openmpi}\n  trainer: {numNodez: 2}\n");
    assert!(
        unknown.contains(r#"unknown field "spec.trainer.numNodez""#),
        "{unknown}"
    );
    let wrong_type = apply("  runtimeRef: {name: mpi-openmpi}\n  trainer: {numNodes: two}\n");
    assert!(wrong_type.contains("spec.trainer.numNodes"), "{wrong_type}");
    assert!(wrong_type.contains("integer"), "{wrong_type}");
    let out_of_range = apply("  runtimeRef: {name: mpi-openmpi}\n  activeDeadlineSeconds: 0\n");
    assert!(
        out_of_range.contains("spec.activeDeadlineSeconds"),
        "{out_of_range}"
    );
    assert!(
        out_of_range.contains("greater than or equal to 1"),
        "{out_of_range}"
    );
    let missing = apply("  trainer: {numNodes: 2}\n");
    assert!(missing.contains("spec.runtimeRef"), "{missing}");
}

#[tokio::test]
async fn operator_writes_status_through_the_subresource() {
    let ns = TestNs::new("status").await;
    let admin: Api<TrainJob> = Api::namespaced(client(Identity::Admin).await, &ns.name);
    admin
        .create(&PostParams::default(), &trainjob(&ns.name, "job", json!({})))
        .await
        .expect("create");

    let operator: Api<TrainJob> = Api::namespaced(client(Identity::Operator).await, &ns.name);
    let status = json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "status": {
            "conditions": [{"type": "Suspended", "status": "False", "reason": "Resumed",
                            "message": "TrainJob is resumed", "lastTransitionTime": "2026-11-25T00:00:00Z"}],
            "jobsStatus": [{"name": "node", "active": 2, "ready": 2, "succeeded": 0, "failed": 0, "suspended": 0}],
        },
        // The status endpoint ignores spec changes.
        "spec": {"suspend": true},
    });
    let params = PatchParams::apply("trainjob-operator").force();
    operator
        .patch_status("job", &params, &Patch::Apply(&status))
        .await
        .expect("operator may patch status");
    let job = admin.get("job").await.expect("get");
    let st = job.status.expect("status written");
    assert_eq!(st.conditions[0].reason, "Resumed");
    assert_eq!(st.jobs_status[0].active, 2);
    assert_eq!(
        job.spec.suspend,
        Some(false),
        "spec must not change through /status"
    );
}

/// kwok deletes pods by name only; the bed holds it to a kubelet's part (`KWOK_GUARD`): it may
/// finalize a pod that is being deleted, not delete a live one, as a stale repeat of an earlier
/// delete would (the pod's successor under the same name).
#[tokio::test]
async fn kwok_may_delete_only_a_pod_that_is_being_deleted() {
    let ns = TestNs::new("kwokdel").await;
    let pods: Api<Pod> = Api::namespaced(client(Identity::Admin).await, &ns.name);
    let as_kwok: Api<Pod> = Api::namespaced(client(Identity::Kwok).await, &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "live"},
        "spec": {"containers": [{"name": "node", "image": "busybox"}]},
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    eventually("the pod to run", DEADLINE, || async {
        let p = pods.get("live").await.map_err(|e| e.to_string())?;
        match p.status.and_then(|s| s.phase) {
            Some(phase) if phase == "Running" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    match as_kwok.delete("live", &DeleteParams::default()).await {
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains(trainjob_testbed::KWOK_GUARD) => {}
        other => panic!(
            "kwok deleted a live pod: {:?}",
            other.map(|_| "the API server accepted the delete")
        ),
    }
    assert!(pods.get("live").await.is_ok(), "the live pod is still there");
    // Once someone deletes it, kwok finalizes it as a kubelet would.
    pods.delete("live", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("kwok to finalize the deleted pod", DEADLINE, || async {
        match pods.get_opt("live").await {
            Ok(None) => Ok(()),
            other => Err(format!(
                "{:?}",
                other.map(|p| p.map(|p| p.metadata.deletion_timestamp))
            )),
        }
    })
    .await;
}

#[tokio::test]
async fn kwok_moves_pods_through_running_succeeded_and_failed() {
    let ns = TestNs::new("pods").await;
    let pods: Api<Pod> = Api::namespaced(client(Identity::Admin).await, &ns.name);
    let pod = |name: &str, labels: serde_json::Value, annotations: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"containers": [{"name": "node", "image": "busybox"}]},
        }))
        .expect("pod")
    };
    let cases = [
        ("worker", pod("worker", json!({}), json!({})), "Running", None),
        (
            "launcher",
            pod(
                "launcher",
                json!({"trainer.kubeflow.org/job-role": "launcher"}),
                json!({}),
            ),
            "Succeeded",
            Some(0),
        ),
        (
            "crash",
            pod(
                "crash",
                json!({}),
                json!({"kwok.trainjob.test/exit-code": "3", "kwok.trainjob.test/reason": "OOMKilled"}),
            ),
            "Failed",
            Some(3),
        ),
    ];
    for (_, p, _, _) in &cases {
        pods.create(&PostParams::default(), p).await.expect("create pod");
    }
    for (name, _, phase, exit) in cases {
        let pod = eventually(&format!("pod {name} to reach {phase}"), DEADLINE, || {
            let pods = pods.clone();
            async move {
                let p = pods.get(name).await.map_err(|e| e.to_string())?;
                let current = p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default();
                if current == phase { Ok(p) } else { Err(current) }
            }
        })
        .await;
        let status = pod.status.expect("status");
        assert!(
            pod.spec
                .and_then(|s| s.node_name)
                .is_some_and(|n| n.starts_with("kwok-node-")),
            "scheduled on a fake node"
        );
        let terminated = status
            .container_statuses
            .unwrap_or_default()
            .into_iter()
            .find_map(|c| c.state?.terminated);
        assert_eq!(terminated.as_ref().map(|t| t.exit_code), exit, "{name}");
        if name == "crash" {
            assert_eq!(terminated.and_then(|t| t.reason).as_deref(), Some("OOMKilled"));
        }
    }
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_its_dependents() {
    let ns = TestNs::new("gc").await;
    let admin = client(Identity::Admin).await;
    let jobs: Api<TrainJob> = Api::namespaced(admin.clone(), &ns.name);
    let job = jobs
        .create(&PostParams::default(), &trainjob(&ns.name, "owner", json!({})))
        .await
        .expect("create");
    let owner = OwnerReference {
        api_version: "trainer.kubeflow.org/v1alpha1".into(),
        kind: "TrainJob".into(),
        name: job.name_any(),
        uid: job.uid().expect("uid"),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns.name);
    let mut cm = ConfigMap {
        data: Some(BTreeMap::from([("hostfile".into(), "a slots=1\n".into())])),
        ..Default::default()
    };
    cm.metadata.name = Some("owner-mpi-hostfile".into());
    cm.metadata.owner_references = Some(vec![owner.clone()]);
    cms.create(&PostParams::default(), &cm).await.expect("configmap");
    let mut secret = Secret::default();
    secret.metadata.name = Some("owner-mpi-ssh-auth".into());
    secret.metadata.owner_references = Some(vec![owner]);
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");

    jobs.delete("owner", &DeleteParams::default())
        .await
        .expect("delete owner");
    eventually("the garbage collector to delete the dependents", DEADLINE, || {
        let (cms, secrets) = (cms.clone(), secrets.clone());
        async move {
            let cm = cms
                .get_opt("owner-mpi-hostfile")
                .await
                .map_err(|e| e.to_string())?;
            let secret = secrets
                .get_opt("owner-mpi-ssh-auth")
                .await
                .map_err(|e| e.to_string())?;
            match (cm, secret) {
                (None, None) => Ok(()),
                (cm, secret) => Err(format!(
                    "configmap left: {}, secret left: {}",
                    cm.is_some(),
                    secret.is_some()
                )),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn tenants_cannot_read_each_others_namespaces() {
    let (ns_a, ns_b) = (TestNs::new("tenant-a").await, TestNs::new("tenant-b").await);
    let admin = client(Identity::Admin).await;
    for (ns, user) in [(&ns_a.name, "tenant-a"), (&ns_b.name, "tenant-b")] {
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": "edit", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }))
        .expect("binding");
        Api::<RoleBinding>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &binding)
            .await
            .expect("bind");
    }
    let a_own: Api<TrainJob> = Api::namespaced(client(Identity::TenantA).await, &ns_a.name);
    // `edit` gains TrainJob rights through aggregation (config/rbac), which kcm fills in shortly.
    eventually("tenant-a to create a TrainJob in its namespace", DEADLINE, || {
        let (a_own, job) = (a_own.clone(), trainjob(&ns_a.name, "mine", json!({})));
        async move {
            a_own
                .create(&PostParams::default(), &job)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    assert_eq!(
        a_own
            .list(&Default::default())
            .await
            .expect("list own")
            .items
            .len(),
        1
    );

    let a_other: Api<TrainJob> = Api::namespaced(client(Identity::TenantA).await, &ns_b.name);
    let b_other: Api<TrainJob> = Api::namespaced(client(Identity::TenantB).await, &ns_a.name);
    for (who, api) in [("tenant-a in b", a_other), ("tenant-b in a", b_other)] {
        match api.list(&Default::default()).await {
            Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "{who}: {s:?}"),
            other => panic!("{who} must be forbidden, got {other:?}"),
        }
    }
    let b_pods: Api<Pod> = Api::namespaced(client(Identity::TenantB).await, &ns_a.name);
    assert!(
        b_pods.list(&Default::default()).await.is_err(),
        "tenant-b cannot list tenant-a's pods"
    );
}

#[tokio::test]
async fn operator_identity_has_only_what_config_rbac_grants() {
    let ns = TestNs::new("rbac").await;
    let operator = client(Identity::Operator).await;
    Api::<Pod>::namespaced(operator.clone(), &ns.name)
        .list(&Default::default())
        .await
        .expect("operator lists pods");
    Api::<TrainJob>::all(operator.clone())
        .list(&Default::default())
        .await
        .expect("operator lists TrainJobs");
    // It creates SSH Secrets but may not read every Secret in the cluster.
    match Api::<Secret>::all(operator.clone())
        .list(&Default::default())
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403),
        other => panic!("listing secrets must be forbidden, got {other:?}"),
    }
    match Api::<TrainJob>::namespaced(operator, &ns.name)
        .create(&PostParams::default(), &trainjob(&ns.name, "x", json!({})))
        .await
    {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403, "the operator never creates TrainJobs"),
        other => panic!("creating TrainJobs must be forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn shipped_manifests_render_and_apply_to_a_real_server() {
    let root = trainjob_testbed::repo_root();
    for base in [
        "config/default",
        "config/crd",
        "config/rbac",
        "config/manager",
        "config/runtimes",
        "config/prometheus",
    ] {
        let rendered = bed().kubectl(&["kustomize", &root.join(base).display().to_string()]);
        let rendered = rendered.unwrap_or_else(|e| panic!("kubectl kustomize {base}: {e}"));
        assert!(rendered.contains("kind:"), "{base} renders to objects");
    }
    // Everything except the ServiceMonitor (whose CRD belongs to the Prometheus Operator) must be
    // accepted by the API server as shipped, with strict field validation.
    let default = root.join("config/default").display().to_string();
    let out = bed().kubectl(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "--validate=strict",
        "-k",
        &default,
    ]);
    let out = out.unwrap_or_else(|e| panic!("config/default: {e}"));
    assert!(
        out.contains("clustertrainingruntime.trainer.kubeflow.org/mpi-openmpi"),
        "{out}"
    );
    assert!(out.contains("deployment.apps/trainjob-operator"), "{out}");

    let ns = TestNs::new("examples").await;
    let examples = std::fs::read_dir(root.join("examples")).expect("examples dir");
    let mut checked = 0;
    for example in examples {
        let path = example.expect("entry").path().display().to_string();
        if path.ends_with("kueue.yaml") {
            // Needs Kueue's CRDs and webhooks: tests/kueue.rs runs it.
            continue;
        }
        let out = bed().kubectl(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--validate=strict",
            "-n",
            &ns.name,
            "-f",
            &path,
        ]);
        let out = out.unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(out.contains("trainjob.trainer.kubeflow.org/"), "{path}: {out}");
        checked += 1;
    }
    assert!(checked >= 5, "every example was checked ({checked})");
}

#[tokio::test]
async fn native_gang_scheduling_api_is_served() {
    // kube-apiserver runs with the GenericWorkload and GangScheduling gates and
    // scheduling.k8s.io/v1alpha2, so Workload and PodGroup objects can be created.
    let out = bed()
        .kubectl(&["api-resources", "--api-group=scheduling.k8s.io", "-o", "name"])
        .expect("api-resources");
    for resource in [
        "workloads.scheduling.k8s.io",
        "podgroups.scheduling.k8s.io",
        "priorityclasses.scheduling.k8s.io",
    ] {
        assert!(
            out.lines().any(|l| l == resource),
            "{resource} missing from:\n{out}"
        );
    }
}

#[tokio::test]
async fn fake_node_capacity_is_configurable_and_enforced_by_the_scheduler() {
    use trainjob_testbed::FakeNode;
    let ns = TestNs::new("capacity").await;
    let mut node = FakeNode::new("kwok-node-small-gpu", 4, 2);
    node.labels.insert("pool".into(), "small-gpu".into());
    bed().add_node(&node).await.expect("add node");

    let pods: Api<Pod> = Api::namespaced(client(Identity::Admin).await, &ns.name);
    let pod = |name: &str, gpus: u32| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "nodeSelector": {"pool": "small-gpu"},
                "containers": [{"name": "node", "image": "busybox",
                    "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}],
            },
        }))
        .expect("pod")
    };
    pods.create(&PostParams::default(), &pod("fits", 2))
        .await
        .expect("create");
    pods.create(&PostParams::default(), &pod("too-big", 4))
        .await
        .expect("create");
    eventually("the 2-GPU pod to run on the 2-GPU node", DEADLINE, || {
        let pods = pods.clone();
        async move {
            let p = pods.get("fits").await.map_err(|e| e.to_string())?;
            let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
            if phase == "Running" { Ok(()) } else { Err(phase) }
        }
    })
    .await;
    let reason = eventually("the 4-GPU pod to be unschedulable", DEADLINE, || {
        let pods = pods.clone();
        async move {
            let p = pods.get("too-big").await.map_err(|e| e.to_string())?;
            let cond = p
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "PodScheduled");
            match cond {
                Some(c) if c.status == "False" => Ok(c.message.unwrap_or_default()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    assert!(reason.contains("Insufficient nvidia.com/gpu"), "{reason}");
}

#[tokio::test]
async fn any_user_reads_the_sdk_version_config_map_and_nothing_else_there() {
    // The Kubeflow SDK runs as the user and reads it from $KUBEFLOW_SYSTEM_NAMESPACE.
    let maps: Api<ConfigMap> = Api::namespaced(client(Identity::TenantA).await, "trainjob-system");
    let public = maps
        .get("kubeflow-trainer-public")
        .await
        .expect("a tenant reads the public ConfigMap");
    let version = public.data.and_then(|mut d| d.remove("kubeflow_trainer_version"));
    assert_eq!(version.as_deref(), Some("v2.3.0"));
    match maps.list(&Default::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403),
        other => panic!("a tenant must not list the system namespace's ConfigMaps: {other:?}"),
    }
}
