use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use trainjob_operator::{api, crdgen};

/// Kubernetes operator for MPI TrainJobs (Kubeflow Trainer v2.3 compatible).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster from KUBECONFIG or the in-cluster service account.
    Run,
    /// Print every CRD as YAML, or write one file per CRD into a directory.
    Crd {
        /// Directory to write `<group>_<plural>.yaml` files into, instead of stdout.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run => run().await,
        Command::Crd { out_dir } => print_crds(out_dir),
        Command::Version => {
            println!("trainjob-operator {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    }
}

fn print_crds(out_dir: Option<PathBuf>) -> anyhow::Result<()> {
    for crd in api::crds() {
        let yaml = crdgen::to_yaml(&crd)?;
        match &out_dir {
            Some(dir) => {
                let path = dir.join(crdgen::file_name(&crd));
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (set KUBECONFIG or run in a pod)")?;
    let version = client
        .apiserver_version()
        .await
        .context("asking the API server for its version")?;
    let jobs: kube::Api<api::TrainJob> = kube::Api::all(client);
    jobs.list(&kube::api::ListParams::default().limit(1))
        .await
        .context("listing TrainJobs failed; are the CRDs installed? (kubectl apply --server-side -k crds)")?;
    tracing::info!(server = %version.git_version, "connected; watching TrainJobs");
    let mut events = std::pin::pin!(
        watcher(jobs, watcher::Config::default())
            .default_backoff()
            .applied_objects()
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            event = events.next() => match event {
                Some(Ok(job)) => tracing::info!(
                    namespace = job.metadata.namespace.as_deref().unwrap_or_default(),
                    name = job.metadata.name.as_deref().unwrap_or_default(),
                    "observed TrainJob"
                ),
                Some(Err(e)) => tracing::warn!(error = %e, "watch error; retrying"),
                None => break,
            },
        }
    }
    tracing::info!("shutting down");
    Ok(())
}
