//! Tenants cannot touch each other. Two tenants with the built-in `edit` role in a namespace each
//! (TrainJob rights come by aggregation from `config/rbac`), a running job of tenant B with its
//! pods and SSH Secret, and every cell of the matrix checked through the real API server: tenant
//! A cannot get, list, watch, create, patch or delete B's TrainJobs, pods or Secrets, read B's
//! pod logs or exec into B's pods, and cannot run B's TrainingRuntime from its own namespace. A
//! user with only `view` cannot create a TrainJob.

use trainjob_testbed::support;

use std::fmt::Debug;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::Resource;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use support::jobs::{HOLD, pod_meta, runtime, wait_condition, wait_pods};
use support::{DEADLINE, Identity, TestNs, client, eventually, operator};
use trainjob_operator::api::TrainJob;

async fn bind(ns: &str, user: &str, role: &str) {
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": format!("{user}-{role}"), "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .expect("binding");
    Api::<RoleBinding>::namespaced(client(Identity::Admin).await, ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind");
}

fn job(ns: &str, name: &str, runtime: &str) -> TrainJob {
    serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"runtimeRef": {"kind": "TrainingRuntime", "name": runtime}},
    }))
    .expect("job")
}

/// Asserts the API server refused `what` with 403.
fn forbidden<T: Debug>(what: &str, result: kube::Result<T>) {
    match result {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what} must be forbidden (403), got {other:?}"),
    }
}

/// Every verb on one kind of object in another tenant's namespace, as `api`'s user.
async fn every_verb_forbidden<K>(kind: &str, api: &Api<K>, name: &str, object: &K)
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    forbidden(&format!("get {kind}"), api.get(name).await);
    forbidden(&format!("list {kind}"), api.list(&Default::default()).await);
    forbidden(
        &format!("watch {kind}"),
        api.watch(&Default::default(), "0").await.map(|_| ()),
    );
    forbidden(
        &format!("create {kind}"),
        api.create(&PostParams::default(), object).await,
    );
    let patch = Patch::Merge(json!({"metadata": {"labels": {"tampered": "yes"}}}));
    forbidden(
        &format!("patch {kind}"),
        api.patch(name, &PatchParams::default(), &patch).await,
    );
    forbidden(
        &format!("delete {kind}"),
        api.delete(name, &DeleteParams::default()).await.map(|_| ()),
    );
}

#[tokio::test]
async fn tenants_cannot_touch_each_others_jobs_pods_logs_or_keys() {
    operator();
    let (a, b, view) = (
        TestNs::new("tenancy-a").await,
        TestNs::new("tenancy-b").await,
        TestNs::new("tenancy-view").await,
    );
    bind(&a.name, Identity::TenantA.user(), "edit").await;
    bind(&view.name, Identity::TenantA.user(), "view").await;
    bind(&b.name, Identity::TenantB.user(), "edit").await;
    let (tenant_a, tenant_b) = (client(Identity::TenantA).await, client(Identity::TenantB).await);

    // Tenant B runs a job on its own runtime; its launcher stays Running.
    runtime(&tenant_b, &b.name, "mpi-openmpi", "rt", |spec| {
        pod_meta(spec, "launcher")["annotations"][HOLD] = json!("true");
    })
    .await;
    let b_jobs: Api<TrainJob> = Api::namespaced(tenant_b.clone(), &b.name);
    // `edit` gains TrainJob rights through aggregation, which kube-controller-manager fills in.
    eventually("tenant-b to create its TrainJob", DEADLINE, || async {
        b_jobs
            .create(&PostParams::default(), &job(&b.name, "pi", "rt"))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    wait_pods(
        &tenant_b,
        &b.name,
        "pi",
        &["pi-launcher-0-0", "pi-node-0-0", "pi-node-0-1"],
    )
    .await;

    // Tenant A against B's namespace: every verb on TrainJobs, pods and Secrets.
    every_verb_forbidden(
        "TrainJob",
        &Api::namespaced(tenant_a.clone(), &b.name),
        "pi",
        &job(&b.name, "x", "rt"),
    )
    .await;
    let pod: Pod = serde_json::from_value(
        json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    )
    .expect("pod");
    every_verb_forbidden(
        "pod",
        &Api::namespaced(tenant_a.clone(), &b.name),
        "pi-node-0-0",
        &pod,
    )
    .await;
    let secret: Secret = serde_json::from_value(json!({"metadata": {"name": "x"}})).expect("secret");
    every_verb_forbidden(
        "Secret",
        &Api::namespaced(tenant_a.clone(), &b.name),
        "pi-mpi-ssh-auth",
        &secret,
    )
    .await;
    // Logs and exec: the launcher's output and a shell in a worker holding the key.
    let pods: Api<Pod> = Api::namespaced(tenant_a.clone(), &b.name);
    forbidden(
        "pods/log",
        pods.logs("pi-launcher-0-0", &Default::default()).await,
    );
    let exec = format!(
        "/api/v1/namespaces/{}/pods/pi-node-0-0/exec?command=cat&command=/etc/hostname&stdout=true",
        b.name
    );
    let request = http::Request::post(exec).body(Vec::new()).expect("request");
    forbidden("pods/exec", tenant_a.request_text(request).await);

    // A's own namespace: A's job naming B's runtime finds no such runtime (runtimeRef is local to
    // the job's namespace) and fails saying where it looked.
    let a_jobs: Api<TrainJob> = Api::namespaced(tenant_a.clone(), &a.name);
    eventually(
        "tenant-a to create a TrainJob in its namespace",
        DEADLINE,
        || async {
            a_jobs
                .create(&PostParams::default(), &job(&a.name, "borrow", "rt"))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
    let (_, failed) = wait_condition(&a_jobs, "borrow", "Failed").await;
    assert_eq!(failed.reason, "RuntimeNotFound", "{}", failed.message);
    assert!(
        failed
            .message
            .contains(&format!("not found in namespace {}", a.name)),
        "{}",
        failed.message
    );

    // View only: tenant A can see TrainJobs in that namespace but not create one.
    let viewed: Api<TrainJob> = Api::namespaced(tenant_a.clone(), &view.name);
    eventually("tenant-a to list TrainJobs as a viewer", DEADLINE, || async {
        viewed
            .list(&Default::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    forbidden(
        "create as a viewer",
        viewed
            .create(&PostParams::default(), &job(&view.name, "nope", "rt"))
            .await,
    );

    // B's job is untouched by all of it.
    let b_job = b_jobs.get("pi").await.expect("job");
    assert!(!b_job.metadata.labels.unwrap_or_default().contains_key("tampered"));
    let key = Api::<Secret>::namespaced(client(Identity::Admin).await, &b.name)
        .get("pi-mpi-ssh-auth")
        .await
        .expect("B's key is still there");
    assert!(!key.metadata.labels.unwrap_or_default().contains_key("tampered"));
}
