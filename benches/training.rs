//! `make bench`, real-node part: the test images' data-parallel training program
//! (`/home/mpiuser/train`: a 64-32-10 MLP on scikit-learn's digits, gradients summed with one
//! `MPI_Allreduce` per step) through the operator at 1, 2 and 4 ranks, with Open MPI 4: all ranks
//! in one pod (shared memory), and one rank per pod (TCP between pods). The program times each epoch's compute and its allreduce (the slowest rank's);
//! this writes the means into a section of `docs/development/benchmarks.md` and
//! `benches/results/training.json`. One machine: every rank is a pod on the same 2-core node,
//! talking TCP over its bridge, so this shows the program's communication cost against its
//! compute, not how it would scale over a network. Needs root (the real node). Asserts nothing
//! about time.

use trainjob_testbed::bench::section;
use trainjob_testbed::support;

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::json;
use support::realnode::{create, finished, launcher_log};
use support::{Identity, TestNs, admitting_operator, client, real_bed};

/// (pods, ranks per pod), one after another.
const RUNS: [(usize, usize); 5] = [(1, 1), (1, 2), (2, 1), (1, 4), (4, 1)];
const EPOCHS: u32 = 60;
const IMAGE: &str = "trainjob.local/openmpi4:bed";

#[derive(Debug, Serialize)]
struct Run {
    ranks: usize,
    pods: usize,
    mean_epoch_s: f64,
    mean_compute_s: f64,
    mean_allreduce_s: f64,
    accuracy: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    image: &'static str,
    epochs: u32,
    runs: Vec<Run>,
}

/// The numbers of the program's `timing` and `final accuracy` lines.
fn parse(pods: usize, ranks: usize, log: &str) -> Option<Run> {
    let timing: Vec<&str> = log
        .lines()
        .find(|l| l.starts_with("timing ranks "))?
        .split_whitespace()
        .collect();
    let value = |key: &str| -> Option<f64> {
        let at = timing.iter().position(|w| *w == key)?;
        timing.get(at + 1)?.parse().ok()
    };
    let accuracy = log.lines().find_map(|l| {
        l.strip_prefix("final accuracy ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })?;
    Some(Run {
        ranks,
        pods,
        mean_epoch_s: value("mean_epoch_s")?,
        mean_compute_s: value("mean_compute_s")?,
        mean_allreduce_s: value("mean_allreduce_s")?,
        accuracy,
    })
}

async fn run(c: &kube::Client, ns: &str, (pods, per_pod): (usize, usize)) -> Run {
    let ranks = pods * per_pod;
    let name = format!("scale-{pods}x{per_pod}");
    let epochs = EPOCHS.to_string();
    let trainer = json!({
        "image": IMAGE, "numNodes": pods, "numProcPerNode": per_pod,
        "command": ["mpirun", "-n", ranks.to_string(), "/home/mpiuser/train", "--epochs", epochs],
    });
    create(c, ns, &name, json!({"name": "mpi-openmpi"}), trainer).await;
    let (type_, _, message) = finished(c, ns, &name).await;
    let log = launcher_log(c, ns, &name).await;
    assert_eq!(type_, "Complete", "{name}: {message}\n{log}");
    parse(pods, ranks, &log).unwrap_or_else(|| panic!("{name}: no timing line:\n{log}"))
}

fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Training scaling (real node)\n\n\
         The test images' training program (`/home/mpiuser/train`: a 64-32-10 MLP on scikit-learn's \
         digits, 1438 training samples, global batch 64, {} epochs, gradients summed by one \
         `MPI_Allreduce` per step) through the operator with Open MPI 4: the ranks in one pod \
         (shared memory) or one per pod (TCP between pods). **One machine**: every pod is on the \
         same 2-core real node and pods talk over its bridge, so this is the program's \
         communication cost against its compute on this machine, not scaling over a network \
         (4 ranks share 2 cores). Times are the slowest rank's, averaged over the epochs. Run on \
         {}.\n",
        r.epochs, r.date
    );
    let _ = writeln!(
        out,
        "| ranks | pods | epoch ms | compute ms | allreduce ms | allreduce share | epoch vs 1 rank | test accuracy |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    let one = r.runs.first().map_or(0.0, |run| run.mean_epoch_s);
    for run in &r.runs {
        let share = run.mean_allreduce_s / (run.mean_compute_s + run.mean_allreduce_s).max(f64::EPSILON);
        let _ = writeln!(
            out,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.0} % | {:.2}× | {:.4} |",
            run.ranks,
            run.pods,
            run.mean_epoch_s * 1e3,
            run.mean_compute_s * 1e3,
            run.mean_allreduce_s * 1e3,
            share * 100.0,
            run.mean_epoch_s / one.max(f64::EPSILON),
            run.accuracy
        );
    }
    out
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = rt.block_on(async {
        real_bed();
        admitting_operator();
        let c = client(Identity::Admin).await;
        let ns = TestNs::new("bench-training").await;
        let mut runs = Vec::new();
        // One after another: a run's timings must not share the cores with another's.
        for shape in RUNS {
            let run = run(&c, &ns.name, shape).await;
            println!("{run:?}");
            runs.push(run);
        }
        Report {
            date: trainjob_operator::lifecycle::now().0.to_string(),
            image: IMAGE,
            epochs: EPOCHS,
            runs,
        }
    });
    section::TRAINING.publish("training", &report, &markdown(&report));
    println!("{}", markdown(&report));
}
