//! The install path a platform engineer uses: `kubectl apply --server-side -k config/default`
//! with the operator's image built from the release binary, running as a pod on the real node
//! under its own service account as two replicas that elect a leader, probes passing, the leader
//! reconciling a TrainJob to `Complete`, and the admission webhook answering the API server
//! through its Service.
//! `make test` builds the release binary and passes it as `TRAINJOB_OPERATOR_BINARY`.

use trainjob_testbed::support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, ListParams, LogParams, PostParams};
use serde_json::json;
use support::jobs::wait_condition;
use support::{DEADLINE, Identity, TestNs, client, eventually, real_bed};
use trainjob_operator::api::TrainJob;

#[tokio::test]
async fn config_default_runs_the_operator_as_a_pod_that_completes_a_job() {
    let binary = std::env::var("TRAINJOB_OPERATOR_BINARY")
        .expect("set TRAINJOB_OPERATOR_BINARY to the release binary (make test does)");
    let bed = real_bed();
    let out = std::process::Command::new("bash")
        .arg(trainjob_testbed::repo_root().join("hack/images.sh"))
        .arg("operator")
        .env("TRAINJOB_OPERATOR_BINARY", &binary)
        .output()
        .expect("hack/images.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let archive = stdout.split_whitespace().nth(1).expect("image archive");
    let node = bed.real_node().expect("real node");
    node.import_image(std::path::Path::new(archive)).expect("import");
    bed.apply_kustomization("tests/fixtures/install")
        .expect("kubectl apply -k");

    let c = client(Identity::Admin).await;
    let deployments: Api<Deployment> = Api::namespaced(c.clone(), "trainjob-system");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "trainjob-system");
    eventually(
        "both operator replicas to be available",
        Duration::from_secs(60),
        || async {
            let d = deployments
                .get("trainjob-operator")
                .await
                .map_err(|e| e.to_string())?;
            match d.status.as_ref().and_then(|s| s.available_replicas) {
                Some(2) => Ok(()),
                // Say why: the pod's phase, conditions and container states.
                _ => Err(format!(
                    "{:?}",
                    pods.list(&ListParams::default()).await.map(|l| l
                        .items
                        .into_iter()
                        .map(|p| p.status)
                        .collect::<Vec<_>>())
                )),
            }
        },
    )
    .await;
    let replicas = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=trainjob-operator"))
        .await
        .expect("operator pods")
        .items;
    assert_eq!(replicas.len(), 2, "two replicas");
    for pod in &replicas {
        let spec = pod.spec.as_ref().expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some(node.name()));
        assert_eq!(spec.service_account_name.as_deref(), Some("trainjob-operator"));
    }
    // The Lease names its holder: `<pod name>_<random suffix>`.
    let leases: Api<Lease> = Api::namespaced(c.clone(), "trainjob-system");
    let holder = eventually("a replica to hold the leader Lease", DEADLINE, || async {
        leases
            .get("trainjob-operator")
            .await
            .ok()
            .and_then(|l| l.spec?.holder_identity)
            .ok_or_else(|| "no holder yet".to_string())
    })
    .await;
    let (pod, standby): (Vec<Pod>, Vec<Pod>) = replicas
        .into_iter()
        .partition(|p| holder.starts_with(&format!("{}_", p.name_any())));
    let (pod, standby) = (
        pod.into_iter().next().expect("the leader is one of the replicas"),
        standby.into_iter().next().expect("a standby"),
    );

    let ns = TestNs::new("install").await;
    let jobs: Api<TrainJob> = Api::namespaced(c.clone(), &ns.name);
    let job: TrainJob = serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": "pi", "namespace": ns.name},
        "spec": {"runtimeRef": {"name": "mpi-openmpi"}, "trainer": {"numNodes": 2}},
    }))
    .expect("job");
    jobs.create(&PostParams::default(), &job).await.expect("create");
    wait_condition(&jobs, "pi", "Complete").await;

    // Admission as installed: the API server calls the webhook through its Service, trusting the
    // CA the operator published, and refuses a job on a runtime that does not exist.
    let mut missing = job.clone();
    missing.metadata.name = Some("lost".into());
    missing.spec.runtime_ref.name = "no-such-runtime".into();
    let err = jobs
        .create(&PostParams::default(), &missing)
        .await
        .expect_err("refused at admission");
    assert!(
        err.to_string()
            .contains("admission webhook \"vtrainjob.trainer.kubeflow.org\" denied the request: spec.runtimeRef: ClusterTrainingRuntime \"no-such-runtime\" not found"),
        "{err}"
    );

    // The operator logs a job's completion with its Event, after the status that the wait above
    // saw: read its log until the line is there.
    let name = pod.metadata.name.clone().expect("name");
    let log = eventually("the operator to log the completion", DEADLINE, || async {
        let log = pods
            .logs(&name, &LogParams::default())
            .await
            .map_err(|e| e.to_string())?;
        match log.contains("TrainJob completed successfully") {
            true => Ok(log),
            false => Err(log),
        }
    })
    .await;
    support::logs::record(&log);
    assert!(log.contains("connected; watching TrainJobs"), "{log}");
    assert!(log.contains("became the leader"), "{log}");
    let log = pods
        .logs(&standby.name_any(), &LogParams::default())
        .await
        .expect("standby log");
    support::logs::record(&log);
    assert!(log.contains("another replica leads; standing by"), "{log}");
    assert!(!log.contains("PodsCreated"), "the standby reconciled: {log}");
}
