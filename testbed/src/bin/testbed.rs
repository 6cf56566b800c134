//! Runs the local test control plane in the foreground (used by `make run`): etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok with fake nodes, plus the CRDs, RBAC and the
//! MPI runtimes from `config/`. Kubeconfigs for each identity are written into `--dir`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use trainjob_testbed::{Bed, BedConfig, FakeNode, Identity};

#[derive(Parser)]
#[command(about = "Run the local test control plane until interrupted")]
struct Args {
    /// Directory for data, logs and kubeconfigs (state of an earlier run is removed).
    #[arg(long, default_value = ".bed")]
    dir: PathBuf,
    /// Number of fake nodes (32 CPUs, 256Gi, 8 GPUs each).
    #[arg(long, default_value_t = 4)]
    nodes: u32,
    /// Also run a real node (containerd, CNI, CoreDNS, kubelet, metrics-server, an S3 server, a
    /// default StorageClass) where pods really run; needs root.
    #[arg(long)]
    real_node: bool,
    /// Also run this many real nodes of the multi-node tier (tjnode-1..N, each in its own network
    /// namespace and cgroup: see docs/development/testing.md); needs root.
    #[arg(long, default_value_t = 0)]
    real_nodes: usize,
    /// Also run Kueue (built by `hack/kueue.sh`) with its TrainJob integration; needs root (it
    /// runs in a mount namespace of its own).
    #[arg(long)]
    kueue: bool,
    /// Register the operator's admission webhooks (`config/webhook`) at https://127.0.0.1:<port>,
    /// where the operator serves them.
    #[arg(long)]
    operator_webhook_port: Option<u16>,
    /// With the real node: make the webhook Service's name resolve, for pods, to this host, where
    /// the operator serves its status server on this port.
    #[arg(long)]
    operator_status_port: Option<u16>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("info,kube_client::client::builder=off")
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    for stale in ["etcd", "pki", "ready"] {
        let path = args.dir.join(stale);
        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
    }
    let dir = std::path::absolute(&args.dir).context("resolving --dir")?;
    let started = Instant::now();
    let bed = Bed::start(BedConfig {
        work_dir: Some(dir),
        nodes: (0..args.nodes)
            .map(|i| FakeNode::new(format!("kwok-node-{i}"), 32, 8))
            .collect(),
        real_node: args.real_node,
        real_nodes: args.real_nodes,
        kueue: args.kueue,
        ..Default::default()
    })
    .await?;
    bed.apply_kustomization("config/runtimes")?;
    if let Some(port) = args.operator_webhook_port {
        bed.register_operator_webhooks(port).await?;
    }
    if let (Some(port), Some(_)) = (args.operator_status_port, bed.real_node()) {
        bed.expose_status_server(port).await?;
    }
    eprintln!(
        "test bed up in {:.1}s at {}\n  admin:    {}\n  operator: {}",
        started.elapsed().as_secs_f64(),
        bed.server(),
        bed.kubeconfig_path(Identity::Admin).display(),
        bed.kubeconfig_path(Identity::Operator).display(),
    );
    if let Some(port) = args.operator_webhook_port {
        eprintln!("  admission: the operator's webhooks call https://127.0.0.1:{port}");
    }
    if args.kueue {
        eprintln!("  Kueue: TrainJob integration on, webhooks registered; log in kueue.log");
    }
    if let Some(node) = bed.real_node() {
        eprintln!(
            "  real node: {} (label and taint {}; images trainjob.local/<name>:bed from hack/images)",
            node.name(),
            trainjob_testbed::REAL_NODE
        );
        eprintln!(
            "  metrics:  kubectl top pod (metrics-server, the real node's pods only; log in node/metrics-server.log)"
        );
        // The keys go to a file only the user reads, never to the terminal.
        let s3 = node.s3();
        let env = bed.dir().join("s3-credentials.env");
        write_private(
            &env,
            &format!(
                "ENDPOINT={}\nACCESS_KEY_ID={}\nSECRET_ACCESS_KEY={}\nREGION={}\n",
                s3.endpoint,
                s3.access_key,
                s3.secret_key,
                trainjob_testbed::s3::REGION
            ),
        )?;
        eprintln!(
            "  S3:       {} (versitygw; keys in {}, for kubectl create secret generic NAME --from-env-file; log in node/versitygw.log)",
            s3.endpoint,
            env.display()
        );
        eprintln!(
            "  volumes:  StorageClass {} (default; host directories under /tmp/hostpath_pv)",
            trainjob_testbed::STORAGE_CLASS
        );
    }
    if let Some(nodes) = bed.real_nodes() {
        let names = nodes.names();
        let addresses: Vec<String> = names
            .iter()
            .map(|n| format!("{n} {}", nodes.address(n).unwrap_or_default()))
            .collect();
        eprintln!(
            "  real nodes: {} (label and taint {}; CoreDNS at {}; logs in nodes/nodeN/)",
            addresses.join(", "),
            trainjob_testbed::REAL_NODE,
            trainjob_testbed::multinode::NODES_HOST
        );
    }
    // Readiness marker for scripts waiting on the bed.
    std::fs::write(bed.dir().join("ready"), bed.server()).context("writing the ready marker")?;
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    eprintln!("stopping the test bed");
    Ok(())
}

/// Writes `content` to a new file at `path` that only its owner may read (mode 0600).
fn write_private(path: &std::path::Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(content.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
