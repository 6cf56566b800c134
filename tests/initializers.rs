//! Data in, on the kwok tier: the initializer steps of `mpi-openmpi-initializers` run before the
//! MPI pods, a failing one fails the job naming it and starts no MPI pod, and the job's volume
//! claim (from the runtime's `volumeClaimPolicies`) is made before the pods, says why the job
//! waits when it cannot bind, and goes with the job, or stays, as its retention policy says.
//! What needs a real volume and a real S3 server is in `realnode_training/data.rs`.

use trainjob_testbed::support;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use support::jobs::{
    EXIT, HOLD, annotate, create_job, names, pod_meta, pod_spec, pods_of, runtime, setup, wait_condition,
    wait_pods, wait_stalled,
};
use support::{DEADLINE, eventually};

const RUNTIME: &str = "mpi-openmpi-initializers";
const CLAIM: &str = "initializer-pi";

fn initializer() -> Value {
    json!({"initializer": {
        "dataset": {"storageUri": "s3://training/digits", "secretRef": {"name": "s3-creds"}},
        "model": {"storageUri": "s3://training/init"},
    }})
}

/// The runtime's claims from StorageClass `class`, retained or not, and the initializers' exit
/// codes (kwok ends a pod with the code its annotation names).
fn tweak(class: &str, retain: bool, dataset_exit: &str) -> impl FnOnce(&mut Value) {
    let class = class.to_string();
    let dataset_exit = dataset_exit.to_string();
    move |spec| {
        let policy = &mut spec["template"]["spec"]["volumeClaimPolicies"][0];
        policy["templates"][0]["spec"]["storageClassName"] = json!(class);
        if retain {
            policy["retentionPolicy"]["whenDeleted"] = json!("Retain");
        }
        pod_meta(spec, "dataset-initializer")["annotations"][EXIT] = json!(dataset_exit);
        pod_meta(spec, "model-initializer")["annotations"][EXIT] = json!("0");
    }
}

/// The runtime without its claim and the mounts of it.
fn without_claims(spec: &mut Value) {
    spec["template"]["spec"]["volumeClaimPolicies"] = json!([]);
    for rjob in ["dataset-initializer", "model-initializer", "node", "launcher"] {
        for c in pod_spec(spec, rjob)["containers"]
            .as_array_mut()
            .expect("containers")
        {
            c.as_object_mut().map(|c| c.remove("volumeMounts"));
        }
    }
}

async fn claim(c: &kube::Client, ns: &str) -> Option<PersistentVolumeClaim> {
    Api::<PersistentVolumeClaim>::namespaced(c.clone(), ns)
        .get_opt(CLAIM)
        .await
        .expect("reading the claim")
}

/// A volume of class `class` made for the job's claim, so that kube-controller-manager binds it.
async fn volume_for(c: &kube::Client, ns: &str, class: &str) -> Api<PersistentVolume> {
    let volumes = Api::<PersistentVolume>::all(c.clone());
    let volume: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": format!("{CLAIM}-{ns}")},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "storageClassName": class,
            "hostPath": {"path": "/tmp/unused"}, "claimRef": {"namespace": ns, "name": CLAIM}},
    }))
    .expect("volume");
    volumes
        .create(&PostParams::default(), &volume)
        .await
        .expect("creating the volume");
    volumes
}

async fn gone(c: &kube::Client, ns: &str, what: &str) {
    eventually(what, DEADLINE, || async {
        let pods = names(&pods_of(c, ns, "pi").await);
        let claim = claim(c, ns).await.map(|_| CLAIM);
        match (pods.is_empty(), claim) {
            (true, None) => Ok(()),
            _ => Err(format!("pods {pods:?}, claim {claim:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn initializers_run_before_the_mpi_pods_on_the_jobs_claim_which_goes_with_the_job() {
    let (ns, c) = setup("initok").await;
    let ns = ns.name.as_str();
    let class = format!("manual-{ns}");
    runtime(&c, ns, RUNTIME, "data", tweak(&class, false, "0")).await;
    let volumes = volume_for(&c, ns, &class).await;
    let jobs = create_job(&c, ns, "pi", "data", initializer()).await;
    wait_condition(&jobs, "pi", "Complete").await;

    let claim = claim(&c, ns).await.expect("the job's claim");
    let owners = claim.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(
        owners
            .iter()
            .map(|o| (o.kind.as_str(), o.name.as_str(), o.controller))
            .collect::<Vec<_>>(),
        [("TrainJob", "pi", Some(true))]
    );
    let pods = pods_of(&c, ns, "pi").await;
    let finished = |name: &str| {
        let pod = pods.iter().find(|p| p.metadata.name.as_deref() == Some(name));
        let statuses = pod.and_then(|p| p.status.as_ref()?.container_statuses.clone());
        statuses
            .and_then(|s| {
                s.first()?
                    .state
                    .as_ref()?
                    .terminated
                    .as_ref()?
                    .finished_at
                    .clone()
            })
            .map(|t| t.0)
            .unwrap_or_else(|| panic!("{name} finished: {pods:?}"))
    };
    let initialized = finished("pi-dataset-initializer-0-0").max(finished("pi-model-initializer-0-0"));
    let launcher = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("pi-launcher-0-0"))
        .expect("the launcher stays");
    let created = launcher.metadata.creation_timestamp.clone().expect("created").0;
    // Whole seconds: the API server keeps creation times to the second.
    assert!(
        created.as_second() >= initialized.as_second(),
        "launcher created {created}, initializers done {initialized}"
    );
    let mounted: Vec<_> = launcher
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            v.persistent_volume_claim
                .as_ref()
                .map(|c| (v.name.as_str(), c.claim_name.as_str()))
        })
        .collect();
    assert_eq!(mounted, [("initializer", CLAIM)]);

    jobs.delete("pi", &DeleteParams::foreground())
        .await
        .expect("delete");
    gone(&c, ns, "the job's pods and claim to be deleted with it").await;
    volumes
        .delete(&format!("{CLAIM}-{ns}"), &DeleteParams::default())
        .await
        .expect("deleting the volume");
}

#[tokio::test]
async fn a_failed_initializer_fails_the_job_naming_it_and_starts_no_mpi_pod() {
    let (ns, c) = setup("initfail").await;
    let ns = ns.name.as_str();
    runtime(&c, ns, RUNTIME, "data", |spec| {
        tweak("unused", false, "3")(spec);
        // No claim here: the step's failure is the point, not storage.
        without_claims(spec);
    })
    .await;
    let jobs = create_job(&c, ns, "pi", "data", initializer()).await;
    let (_, failed) = wait_condition(&jobs, "pi", "Failed").await;
    assert_eq!(failed.reason, "FailedJobs");
    assert_eq!(
        failed.message,
        "the dataset initializer failed reading s3://training/digits, so training did not start: pod pi-dataset-initializer-0-0 failed: container dataset-initializer exited with code 3 (Error); its credentials come from Secret s3-creds (spec.initializer.dataset.secretRef)"
    );
    let pods = names(&pods_of(&c, ns, "pi").await);
    assert!(
        pods.iter().all(|p| p.contains("initializer")),
        "no MPI pod: {pods:?}"
    );
}

#[tokio::test]
async fn a_claim_that_cannot_bind_is_why_the_job_waits_and_nothing_stays_when_it_is_deleted() {
    let (ns, c) = setup("initwait").await;
    let ns = ns.name.as_str();
    runtime(&c, ns, RUNTIME, "data", tweak("no-such-class", false, "0")).await;
    let jobs = create_job(&c, ns, "pi", "data", initializer()).await;
    let waiting = wait_stalled(&jobs, "pi", ("True", "VolumeClaimNotBound", CLAIM), DEADLINE).await;
    assert!(waiting.message.contains("no-such-class"), "{}", waiting.message);
    assert!(
        names(&pods_of(&c, ns, "pi").await)
            .iter()
            .all(|p| p.contains("initializer")),
        "the MPI pods wait for the initializers"
    );
    // Deleted while initializing: the pods and the claim go with it.
    jobs.delete("pi", &DeleteParams::background())
        .await
        .expect("delete");
    gone(&c, ns, "the waiting job's pods and claim to be deleted with it").await;
}

#[tokio::test]
async fn a_retained_claim_outlives_its_job() {
    let (ns, c) = setup("initkeep").await;
    let ns = ns.name.as_str();
    runtime(&c, ns, RUNTIME, "data", tweak("no-such-class", true, "0")).await;
    let jobs = create_job(&c, ns, "pi", "data", initializer()).await;
    eventually("the job's claim", DEADLINE, || async {
        claim(&c, ns).await.map(|_| ()).ok_or("no claim yet".to_string())
    })
    .await;
    jobs.delete("pi", &DeleteParams::foreground())
        .await
        .expect("delete");
    eventually("the job to be gone", DEADLINE, || async {
        match jobs.get_opt("pi").await {
            Ok(None) => Ok(()),
            other => Err(format!(
                "{:?}",
                other.map(|j| j.map(|j| j.metadata.deletion_timestamp))
            )),
        }
    })
    .await;
    let kept = claim(&c, ns).await.expect("retained after the job");
    assert!(kept.metadata.owner_references.is_none_or(|o| o.is_empty()));
    assert!(kept.metadata.deletion_timestamp.is_none());
}

#[tokio::test]
async fn a_gang_restart_keeps_the_initializers_that_finished() {
    let (ns, c) = setup("initrestart").await;
    let ns = ns.name.as_str();
    runtime(&c, ns, RUNTIME, "data", |spec| {
        tweak("unused", false, "0")(spec);
        without_claims(spec);
        spec["template"]["spec"]["failurePolicy"] = json!({"maxRestarts": 1});
        pod_meta(spec, "launcher")["annotations"][HOLD] = json!("true");
    })
    .await;
    let jobs = create_job(&c, ns, "pi", "data", initializer()).await;
    let all = [
        "pi-dataset-initializer-0-0",
        "pi-launcher-0-0",
        "pi-model-initializer-0-0",
        "pi-node-0-0",
        "pi-node-0-1",
    ];
    let first = wait_pods(&c, ns, "pi", &all).await;
    let initializers = |pods: &[k8s_openapi::api::core::v1::Pod]| -> Vec<(String, String, String)> {
        pods.iter()
            .filter(|p| p.name_any().contains("initializer"))
            .map(|p| {
                let attempt = p.labels().get("trainer.kubeflow.org/restart-attempt").cloned();
                let phase = p.status.clone().and_then(|s| s.phase);
                (
                    p.uid().unwrap_or_default(),
                    attempt.unwrap_or_default(),
                    phase.unwrap_or_default(),
                )
            })
            .collect()
    };
    let before = initializers(&first);
    assert!(
        before.len() == 2
            && before
                .iter()
                .all(|(_, attempt, phase)| attempt == "0" && phase == "Succeeded"),
        "{before:?}"
    );
    let first_workers: Vec<_> = first
        .iter()
        .filter(|p| p.name_any().contains("-node-"))
        .map(|p| p.uid())
        .collect();

    annotate(&c, ns, "pi-node-0-1", EXIT, Some("1")).await;
    eventually(
        "the MPI pods to be recreated under attempt 1",
        DEADLINE,
        || async {
            let pods = wait_pods(&c, ns, "pi", &all).await;
            let fresh = pods
                .iter()
                .filter(|p| !p.name_any().contains("initializer"))
                .all(|p| {
                    !first_workers.contains(&p.uid())
                        && p.labels()
                            .get("trainer.kubeflow.org/restart-attempt")
                            .map(String::as_str)
                            == Some("1")
                });
            match fresh {
                true => Ok(()),
                false => Err(format!("{:?}", names(&pods))),
            }
        },
    )
    .await;
    // The same initializer pods, of attempt 0: they never ran again.
    assert_eq!(initializers(&pods_of(&c, ns, "pi").await), before);
    annotate(&c, ns, "pi-launcher-0-0", HOLD, None).await;
    let (job, _) = wait_condition(&jobs, "pi", "Complete").await;
    assert_eq!(job.status.and_then(|s| s.restarts), Some(1));
    assert_eq!(initializers(&pods_of(&c, ns, "pi").await), before);
}
