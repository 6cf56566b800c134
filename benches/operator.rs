//! `make bench`: how fast the pure core is, and how fast the operator turns TrainJobs into running
//! pods on the local control plane. Prints a table; asserts nothing about time.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use serde_json::json;
use support::{Identity, Operator, bed, bench_bed, client};
use trainjob_operator::api::{ClusterTrainingRuntime, TrainJob};
use trainjob_operator::lifecycle::{decide, now};
use trainjob_operator::pods;
use trainjob_operator::resolve::resolve;
use trainjob_operator::ssh::{KeyAlgorithm, KeyPair};

fn time<T>(label: &str, iterations: u32, mut f: impl FnMut() -> T) {
    let start = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(f());
    }
    let per = start.elapsed() / iterations;
    println!(
        "{label:<52} {:>12.3} µs/op  ({iterations} runs)",
        per.as_secs_f64() * 1e6
    );
}

fn job(name: &str, nodes: i32) -> TrainJob {
    serde_json::from_value(json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": name, "namespace": "bench", "uid": "u", "creationTimestamp": "2026-11-25T10:00:00Z"},
        "spec": {"runtimeRef": {"name": "mpi-openmpi"}, "trainer": {"numNodes": nodes}},
    }))
    .expect("job")
}

fn micro() {
    let path = trainjob_testbed::repo_root().join("config/runtimes/mpi-openmpi.yaml");
    let rt: ClusterTrainingRuntime =
        serde_saphyr::from_str(&std::fs::read_to_string(path).expect("runtime")).expect("yaml");
    let runtime = rt.spec.0;
    let j = job("pi", 32);
    time("resolve a 32-node job", 2000, || {
        resolve(&j, "rt", &runtime).expect("plan")
    });
    let plan = resolve(&j, "rt", &runtime).expect("plan");
    time("build all 33 pods + hostfile + service", 500, || {
        let pods: Vec<_> = plan
            .jobs
            .iter()
            .flat_map(|rjob| rjob.indices().map(move |at| (rjob, at)))
            .map(|(rjob, at)| pods::pod(&j, &plan, rjob, at, 0))
            .collect();
        (
            pods,
            trainjob_operator::hostfile::configmap(&j, &plan),
            pods::service(&j, &plan),
        )
    });
    let running: Vec<_> = plan
        .jobs
        .iter()
        .flat_map(|rjob| rjob.indices().map(move |at| (rjob, at)))
        .map(|(rjob, at)| {
            let mut pod = pods::pod(&j, &plan, rjob, at, 0);
            pod.status = Some(
                serde_json::from_value(
                    json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
                )
                .expect("status"),
            );
            pod
        })
        .collect();
    let t = now();
    time("decide() for a running 32-node job (33 pods)", 2000, || {
        decide(&j, &plan, &running, &t)
    });
    for (algorithm, n) in [
        (KeyAlgorithm::Ed25519, 200),
        (KeyAlgorithm::EcdsaP256, 200),
        (KeyAlgorithm::EcdsaP384, 50),
        (KeyAlgorithm::EcdsaP521, 50),
        (KeyAlgorithm::Rsa3072, 2),
    ] {
        time(&format!("generate an SSH key ({algorithm})"), n, || {
            KeyPair::generate(algorithm, "bench").expect("key")
        });
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn macro_bench(jobs: usize, nodes: i32) {
    bench_bed()
        .apply_kustomization("config/runtimes")
        .expect("runtimes");
    let operator = Operator::start();
    let ns = bed().namespace("bench").await.expect("namespace");
    let c = client(Identity::Admin).await;
    let api: Api<TrainJob> = Api::namespaced(c.clone(), &ns);
    let start = Instant::now();
    let mut created = Vec::new();
    for i in 0..jobs {
        let mut j = job(&format!("job-{i}"), nodes);
        j.metadata.namespace = Some(ns.clone());
        j.metadata.uid = None;
        j.metadata.creation_timestamp = None;
        api.create(&PostParams::default(), &j).await.expect("create");
        created.push((j.metadata.name.clone().unwrap_or_default(), Instant::now()));
    }
    let mut done: Vec<Duration> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut pending = created.clone();
    while !pending.is_empty() && Instant::now() < deadline {
        let list = api.list(&Default::default()).await.expect("list");
        pending.retain(|(name, at)| {
            let complete = list.items.iter().any(|j| {
                j.metadata.name.as_deref() == Some(name.as_str())
                    && j.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Complete" && c.status == "True")
                    })
            });
            if complete {
                done.push(at.elapsed());
            }
            !complete
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = start.elapsed();
    done.sort();
    println!(
        "{jobs} jobs x {nodes} nodes ({} pods): all Complete in {:.2}s; per job create->Complete p50 {:.2}s p95 {:.2}s max {:.2}s; {} never completed",
        jobs * (nodes as usize + 1),
        total.as_secs_f64(),
        percentile(&done, 0.5).as_secs_f64(),
        percentile(&done, 0.95).as_secs_f64(),
        done.last().copied().unwrap_or_default().as_secs_f64(),
        pending.len(),
    );
    let text = operator.metrics.encode();
    for line in text.lines().filter(|l| {
        l.starts_with("trainjob_reconcile_duration_seconds_count")
            || l.starts_with("trainjob_reconcile_duration_seconds_sum")
    }) {
        println!("  {line}");
    }
    operator.stop();
}

/// Sequential TrainJob creates (suspended, so nothing else runs) in a fresh namespace: the time
/// each create takes, sorted.
async fn creates(count: usize) -> Vec<Duration> {
    let ns = bed().namespace("admit").await.expect("namespace");
    let api: Api<TrainJob> = Api::namespaced(client(Identity::Admin).await, &ns);
    let mut took = Vec::with_capacity(count);
    for i in 0..count {
        let mut j = job(&format!("job-{i}"), 4);
        j.metadata.namespace = Some(ns.clone());
        j.metadata.uid = None;
        j.metadata.creation_timestamp = None;
        j.spec.suspend = Some(true);
        let start = Instant::now();
        api.create(&PostParams::default(), &j).await.expect("create");
        took.push(start.elapsed());
    }
    took.sort();
    took
}

/// What admission adds to a create: the same creates without the webhook (the floor), then with
/// the shipped webhook configurations calling the operator (runtime read, rules, audit line).
async fn admission_bench(count: usize) {
    let floor = creates(count).await;
    let operator = Operator::start_admitting();
    let admitted = creates(count).await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{count} TrainJob creates, one at a time: without the webhook p50 {:.1} ms p95 {:.1} ms; with it p50 {:.1} ms p95 {:.1} ms ({:.2}x the floor at p50)",
        ms(percentile(&floor, 0.5)),
        ms(percentile(&floor, 0.95)),
        ms(percentile(&admitted, 0.5)),
        ms(percentile(&admitted, 0.95)),
        percentile(&admitted, 0.5).as_secs_f64() / percentile(&floor, 0.5).as_secs_f64(),
    );
    operator.stop();
}

fn main() {
    // `cargo bench` passes --bench; any other argument filters nothing here.
    println!("== pure core (no server) ==");
    micro();
    println!("== operator on the local control plane (kube-scheduler + kwok) ==");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        macro_bench(1, 4).await;
        macro_bench(20, 4).await;
        macro_bench(5, 32).await;
        // Last: the webhook stays registered once it is.
        admission_bench(200).await;
    });
}
