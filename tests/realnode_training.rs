//! Real training through the operator on the real node: `/home/mpiuser/train` (the MPI images'
//! data-parallel MLP on scikit-learn's digits, gradients averaged with `MPI_Allreduce`) with
//! Open MPI 4 and 5, MPICH and Intel MPI. Each job checkpoints to a shared volume and reports
//! its progress each epoch with the Kubeflow SDK's own `update_trainjob_status()`, which finds
//! the status server through the variables, CA and token the operator gave its pods. The test
//! watches `trainerStatus` go from low to 100 % with the metrics, and checks the accuracy, that
//! every rank ended with the same model, and that the checkpoint holds that model.

use trainjob_testbed::support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, future::join_all};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::jobs::{pod_spec, runtime};
use support::realnode::{create, finished, launcher_log};
use support::{DEADLINE, TestNs, admitting_operator, bed, client, eventually, real_bed};
use trainjob_operator::api::TrainJob;

// Data in and results out (S3, provisioned volumes, initializers): in this binary so that it shares
// its real node instead of starting one of its own.
#[path = "realnode_training/data.rs"]
mod data;

/// Hosts per job and ranks per host.
const NODES: usize = 2;
const SLOTS: usize = 2;
const EPOCHS: u32 = 30;
const TARGET: f64 = 0.90;
/// Where the shared volume is mounted in every pod.
const CHECKPOINTS: &str = "/checkpoints";

/// (job, image, shipped runtime, whether the runtime takes the launch line as `args`).
const CASES: [(&str, &str, &str, bool); 4] = [
    ("ompi4", "trainjob.local/openmpi4:bed", "mpi-openmpi", false),
    ("ompi5", "trainjob.local/openmpi5:bed", "mpi-openmpi", false),
    ("mpich", "trainjob.local/mpich:bed", "mpi-mpich", true),
    ("intel", "trainjob.local/intel:bed", "mpi-intel", true),
];

/// Progress values seen per job, in the order the watch delivered them, with the last metrics.
type Seen = Arc<Mutex<BTreeMap<String, (Vec<i64>, Value)>>>;

/// A ReadWriteMany claim `checkpoints` on a host directory of the bed (owned by uid 1000, the
/// images' user), bound through the PV controller as any static volume is.
async fn shared_volume(c: &Client, ns: &str) -> std::path::PathBuf {
    let dir = bed().dir().join(format!("checkpoints-{ns}"));
    std::fs::create_dir_all(&dir).expect("checkpoint directory");
    std::os::unix::fs::chown(&dir, Some(1000), Some(1000)).expect("chown");
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": format!("{ns}-checkpoints")},
        "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                 "hostPath": {"path": dir.display().to_string(), "type": "Directory"},
                 "claimRef": {"namespace": ns, "name": "checkpoints"}},
    }))
    .expect("pv");
    Api::<PersistentVolume>::all(c.clone())
        .create(&PostParams::default(), &pv)
        .await
        .expect("create PV");
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "checkpoints", "namespace": ns},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                 "volumeName": format!("{ns}-checkpoints"),
                 "resources": {"requests": {"storage": "1Gi"}}},
    }))
    .expect("pvc");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), ns);
    claims
        .create(&PostParams::default(), &pvc)
        .await
        .expect("create PVC");
    eventually("the checkpoint claim to bind", DEADLINE, || async {
        let phase = claims
            .get("checkpoints")
            .await
            .map_err(|e| e.to_string())?
            .status
            .and_then(|s| s.phase);
        match phase.as_deref() {
            Some("Bound") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    dir
}

/// Runs `/home/mpiuser/train` as job `name` on a copy of `shipped` with the shared volume.
async fn submit(c: &Client, ns: &str, (name, image, shipped, hydra): (&str, &str, &str, bool)) {
    runtime(c, ns, shipped, name, |spec| {
        for rjob in ["node", "launcher"] {
            let pod = pod_spec(spec, rjob);
            pod["volumes"] =
                json!([{"name": "checkpoints", "persistentVolumeClaim": {"claimName": "checkpoints"}}]);
            pod["containers"][0]["volumeMounts"] = json!([{"name": "checkpoints", "mountPath": CHECKPOINTS}]);
        }
    })
    .await;
    let ranks = (NODES * SLOTS).to_string();
    let dir = format!("{CHECKPOINTS}/{name}");
    let epochs = EPOCHS.to_string();
    let line = [
        "mpirun",
        "-n",
        &ranks,
        "/home/mpiuser/train",
        "--epochs",
        &epochs,
        "--checkpoint-dir",
        &dir,
    ];
    let mut trainer = json!({"image": image, "numNodes": NODES, "numProcPerNode": SLOTS});
    trainer[if hydra { "args" } else { "command" }] = json!(line);
    create(
        c,
        ns,
        name,
        json!({"kind": "TrainingRuntime", "name": name}),
        trainer,
    )
    .await;
}

/// Records every `trainerStatus` the watch shows for the namespace's jobs.
fn watch_progress(c: &Client, ns: &str) -> Seen {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let stream = watcher(
        Api::<TrainJob>::namespaced(c.clone(), ns),
        watcher::Config::default(),
    )
    .applied_objects()
    .for_each(move |job| {
        if let Ok(job) = job
            && let Some(t) = job.status.as_ref().and_then(|s| s.trainer_status.as_ref())
        {
            let mut seen = record.lock().unwrap_or_else(|e| e.into_inner());
            let (values, metrics) = seen.entry(job.name_any()).or_default();
            if let Some(p) = t.progress_percentage
                && values.last() != Some(&i64::from(p))
            {
                values.push(i64::from(p));
            }
            *metrics = t
                .metrics
                .iter()
                .map(|m| (m.name.clone(), json!(m.value)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        async {}
    });
    tokio::spawn(stream);
    seen
}

async fn check(c: &Client, ns: &str, dir: &std::path::Path, seen: &Seen, name: &str) {
    let (type_, reason, message) = finished(c, ns, name).await;
    let log = launcher_log(c, ns, name).await;
    assert_eq!(
        (type_.as_str(), reason.as_str()),
        ("Complete", "AllJobsCompleted"),
        "{name}: {message}\n{log}"
    );
    let ranks = NODES * SLOTS;
    let models: BTreeMap<usize, String> = log
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("rank ")?;
            let (rank, rest) = rest.split_once(&format!(" of {ranks} on "))?;
            let (_, sha) = rest.split_once(" model sha256 ")?;
            Some((rank.parse().ok()?, sha.trim().to_string()))
        })
        .collect();
    assert_eq!(models.len(), ranks, "{name}: every rank's model:\n{log}");
    let model = models[&0].clone();
    assert!(
        models.values().all(|m| *m == model),
        "{name}: the ranks disagree on the model: {models:?}"
    );
    let accuracy: f64 = log
        .lines()
        .find_map(|l| {
            l.strip_prefix("final accuracy ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{name}: no final accuracy:\n{log}"));
    assert!(accuracy >= TARGET, "{name}: accuracy {accuracy}:\n{log}");
    assert!(
        log.contains("final progress report landed"),
        "{name}: the SDK's last report:\n{log}"
    );
    // The shared volume holds the last epoch's checkpoint of that very model.
    let saved: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(name).join("checkpoint.json")).expect("checkpoint.json"),
    )
    .expect("JSON");
    assert_eq!(
        (saved["epoch"].as_u64(), saved["sha256"].as_str()),
        (Some(u64::from(EPOCHS)), Some(model.as_str())),
        "{name}: {saved}"
    );
    assert!(dir.join(name).join("model.npz").is_file(), "{name}: model.npz");
    // The SDK's reports, as the watch saw them land: low first, 100 % last, with the metrics.
    let (values, metrics) = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned()
        .unwrap_or_default();
    assert!(
        values.len() >= 2 && values[0] < 50 && values.last() == Some(&100),
        "{name}: progress seen {values:?}"
    );
    assert!(values.windows(2).all(|w| w[0] < w[1]), "{name}: {values:?}");
    let reported: f64 = metrics["accuracy"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or(0.0);
    assert!(
        (reported - accuracy).abs() < 1e-3 && metrics["epoch"] == json!(EPOCHS.to_string()),
        "{name}: {metrics}"
    );
    assert!(metrics["loss"].as_str().is_some(), "{name}: {metrics}");
}

#[tokio::test]
async fn digits_training_reaches_its_accuracy_on_every_mpi_and_reports_progress_with_the_sdk() {
    real_bed();
    let port = admitting_operator().status_port.expect("status server");
    let c = client(support::Identity::Admin).await;
    bed()
        .expose_status_server(port)
        .await
        .expect("the status server's Service");
    let ns = TestNs::new("training").await;
    let dir = shared_volume(&c, &ns.name).await;
    let seen = watch_progress(&c, &ns.name);
    for case in CASES {
        submit(&c, &ns.name, case).await;
    }
    join_all(
        CASES
            .iter()
            .map(|(name, ..)| check(&c, &ns.name, &dir, &seen, name)),
    )
    .await;
    Api::<PersistentVolume>::all(c.clone())
        .delete(&format!("{}-checkpoints", ns.name), &DeleteParams::default())
        .await
        .expect("delete PV");
}
