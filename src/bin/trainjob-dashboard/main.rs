//! The dashboard's server: the page and its API, as `config/dashboard` runs it. A binary of its
//! own, so the operator's carries none of it: every page of an executable a process touches
//! counts in its resident memory, and the dashboard's code was a third of the operator's.

use anyhow::Context;
use clap::Parser;
use trainjob_operator::dashboard::{self, Identity};
use trainjob_operator::logging::{self, LogFormat};

/// Serve the TrainJob dashboard (the page and its API): every request acts as the user who
/// signed in on the page, or of its bearer token (`Authorization: Bearer`, from an
/// authenticating proxy), against the cluster of KUBECONFIG or the in-cluster service account,
/// whose own credentials are not used.
#[derive(Parser)]
#[command(version = trainjob_operator::VERSION, about)]
struct Cli {
    /// Where to listen.
    #[arg(long, env = "TRAINJOB_DASHBOARD_ADDR", default_value = "0.0.0.0:8080")]
    addr: std::net::SocketAddr,
    /// Log format: `text` (coloured only on a terminal) or `json` (one object per line).
    #[arg(long, env = "TRAINJOB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> anyhow::Result<()> {
    trainjob_operator::runtime::run(serve()).context("starting the async runtime")?
}

async fn serve() -> anyhow::Result<()> {
    let Cli { addr, log_format } = Cli::parse();
    logging::init(log_format);
    let config = kube::Config::infer().await.context("finding the cluster")?;
    let listener = dashboard::listen(addr).await?;
    tracing::info!(%addr, cluster = %config.cluster_url, "serving the dashboard; each request acts as its bearer token's user");
    dashboard::serve(
        listener,
        Identity::bearer(config),
        trainjob_operator::shutdown::signal(),
    )
    .await?;
    Ok(())
}
