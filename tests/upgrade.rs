//! An upgrade, as `config/manager`'s rolling update does it: the next build (the release binary
//! `make test` builds with a newer version) starts as a standby replica, the running one stops
//! and hands over the leader Lease, and the new one adopts every job as it is: no pod, key or
//! object rewritten, and the running job finishes under the new build.

use trainjob_testbed::support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, ListParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use support::jobs::{HOLD, PI_PODS, annotate, create_job, pod_meta, runtime, wait_condition, wait_pods};
use support::process::{OperatorProcess, metric_sum};
use support::{DEADLINE, Identity, Operator, TestNs, bed, client, eventually, free_port};
use trainjob_operator::api::TrainJob;
use trainjob_operator::leader::Timing;

/// `name → (uid, resourceVersion)` of every `K` in `ns`.
async fn versions<K>(c: &Client, ns: &str) -> BTreeMap<String, (String, String)>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(c.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|o| {
            (
                o.name_any(),
                (
                    o.uid().unwrap_or_default(),
                    o.resource_version().unwrap_or_default(),
                ),
            )
        })
        .collect()
}

/// Everything the operator made or writes in `ns`, with the version of each object.
async fn snapshot(c: &Client, ns: &str) -> [BTreeMap<String, (String, String)>; 5] {
    [
        versions::<Pod>(c, ns).await,
        versions::<Secret>(c, ns).await,
        versions::<ConfigMap>(c, ns).await,
        versions::<Service>(c, ns).await,
        versions::<TrainJob>(c, ns).await,
    ]
}

/// The `version` label of `trainjob_build_info` in Prometheus text.
fn build_version(metrics: &str) -> Option<String> {
    let line = metrics.lines().find(|l| l.starts_with("trainjob_build_info{"))?;
    let rest = line.split_once("version=\"")?.1;
    Some(rest.split_once('"')?.0.to_string())
}

#[tokio::test]
async fn a_newer_build_adopts_running_and_finished_jobs_without_rewriting_anything() {
    let bed = bed();
    let ns = TestNs::new("upgrade").await;
    let c = client(Identity::Admin).await;
    runtime(&c, &ns.name, "mpi-openmpi", "held", |rt| {
        pod_meta(rt, "launcher")["annotations"][HOLD] = json!("true");
    })
    .await;
    runtime(&c, &ns.name, "mpi-openmpi", "plain", |_| {}).await;

    // The running build: one job finished, one running (its launcher held).
    let old = Operator::start_elected("old", Timing::default());
    let jobs = create_job(&c, &ns.name, "done", "plain", json!({"trainer": {"numNodes": 2}})).await;
    create_job(&c, &ns.name, "pi", "held", json!({"trainer": {"numNodes": 2}})).await;
    wait_condition(&jobs, "done", "Complete").await;
    wait_pods(&c, &ns.name, "pi", &PI_PODS).await;
    wait_pods(&c, &ns.name, "done", &["done-launcher-0-0"]).await;
    // Settled: the running job's status counts both its jobs ready (the old build's last write),
    // and the finished job's key is gone.
    eventually("both jobs settled", DEADLINE, || async {
        let pi = jobs.get("pi").await.map_err(|e| e.to_string())?;
        let ready: Vec<(String, i32, i32)> = pi
            .status
            .iter()
            .flat_map(|s| &s.jobs_status)
            .map(|j| (j.name.clone(), j.active, j.ready))
            .collect();
        let secrets: Vec<String> = versions::<Secret>(&c, &ns.name).await.into_keys().collect();
        let want = [("node".to_string(), 1, 1), ("launcher".to_string(), 1, 1)];
        if ready == want && secrets == ["pi-mpi-ssh-auth"] {
            Ok(())
        } else {
            Err(format!("{ready:?}, Secrets {secrets:?}"))
        }
    })
    .await;
    let before = snapshot(&c, &ns.name).await;
    let old_version = build_version(&old.metrics.encode()).expect("build info");

    // The next build comes up as a standby, as a rolling update's surge replica does.
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("upgrade-operator.log");
    let args = [
        "--leader-elect".to_string(),
        "--network-policies".into(),
        "--disable-webhook".into(),
    ];
    let new = OperatorProcess::start(bed, free_port(), &args, log.clone()).await;
    let new_version = build_version(&new.metrics().await).expect("build info");
    assert_ne!(
        new_version, old_version,
        "the release binary must report a newer version (`make test` builds it with TRAINJOB_BUILD_VERSION)"
    );
    assert_eq!(
        metric_sum(&new.metrics().await, "trainjob_leader"),
        0.0,
        "standby"
    );

    // The old replica stops; the new one takes the Lease and reconciles both jobs.
    old.stop();
    let leases: Api<Lease> = Api::namespaced(c.clone(), "trainjob-system");
    eventually("the new build to lead", DEADLINE, || async {
        let holder = leases
            .get("trainjob-operator")
            .await
            .map_err(|e| e.to_string())?
            .spec
            .and_then(|s| s.holder_identity)
            .unwrap_or_default();
        let leads = metric_sum(&new.metrics().await, "trainjob_leader") == 1.0;
        if leads && holder.starts_with("trainjob-operator_") {
            Ok(())
        } else {
            Err(format!("holder {holder:?}, leads {leads}"))
        }
    })
    .await;
    eventually("the new build to reconcile both jobs", DEADLINE, || async {
        let n = metric_sum(&new.metrics().await, "trainjob_reconcile_duration_seconds_count");
        if n >= 2.0 {
            Ok(())
        } else {
            Err(format!("{n} reconciles"))
        }
    })
    .await;
    let after = snapshot(&c, &ns.name).await;
    for (kind, (was, is)) in ["pods", "Secrets", "ConfigMaps", "Services", "TrainJobs"]
        .iter()
        .zip(before.iter().zip(&after))
    {
        assert_eq!(
            was, is,
            "{kind} (name → uid, resourceVersion) changed in the upgrade"
        );
    }

    // The running job finishes under the new build, which cleans up after it.
    annotate(&c, &ns.name, "pi-launcher-0-0", HOLD, None).await;
    wait_condition(&jobs, "pi", "Complete").await;
    wait_pods(&c, &ns.name, "pi", &["pi-launcher-0-0"]).await;
    eventually(
        "the finished job's key to go",
        Duration::from_secs(30),
        || async {
            let secrets = versions::<Secret>(&c, &ns.name).await;
            if secrets.is_empty() {
                Ok(())
            } else {
                Err(format!("{:?}", secrets.keys()))
            }
        },
    )
    .await;
    let metrics = new.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "trainjob_jobs_completed_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "trainjob_reconcile_errors_total"),
        0.0,
        "{metrics}"
    );
    new.stop();
}
