use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use trainjob_operator::api;
use trainjob_operator::flags::{parse_domain, parse_duration, parse_timeout};
use trainjob_operator::logging::{self, LogFormat};

/// Kubernetes operator for MPI TrainJobs (Kubeflow Trainer v2.3 compatible).
#[derive(Parser)]
#[command(version = trainjob_operator::VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster from KUBECONFIG or the in-cluster service account.
    Run(Box<RunArgs>),
    /// Print the version.
    Version,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "TRAINJOB_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: std::net::SocketAddr,
    /// Algorithm of the per-job SSH keys: ecdsa-p256, ecdsa-p384, ecdsa-p521, ed25519, rsa-3072, rsa-4096.
    #[arg(long, env = "TRAINJOB_SSH_KEY_ALGORITHM", default_value = "ecdsa-p256")]
    ssh_key_algorithm: trainjob_operator::ssh::KeyAlgorithm,
    /// Refuse key algorithms FIPS 186-4 does not approve (ed25519).
    #[arg(long, env = "TRAINJOB_FIPS")]
    fips: bool,
    /// TrainJobs reconciled in parallel (a reconcile mostly waits on the API server; `make bench`
    /// measured 4, 8, 16 and 32 on a burst of 100 jobs, and 32 created their pods fastest).
    #[arg(long, env = "TRAINJOB_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// Most pods one TrainJob may have; larger jobs fail at once with TooManyPods.
    #[arg(long, env = "TRAINJOB_MAX_PODS_PER_JOB", default_value_t = trainjob_operator::validate::DEFAULT_MAX_PODS_PER_JOB, value_parser = clap::value_parser!(u32).range(1..))]
    max_pods_per_job: u32,
    /// The cluster's DNS domain (the kubelets' `--cluster-domain`): MPI pods search
    /// `<job>.<namespace>.svc.<domain>` so that bare pod hostnames resolve.
    #[arg(long, env = "TRAINJOB_CLUSTER_DOMAIN", default_value = trainjob_operator::plan::DEFAULT_CLUSTER_DOMAIN, value_parser = parse_domain)]
    cluster_domain: String,
    /// Keep a finished job's SSH Secret (for debugging). By default it is deleted as soon as the
    /// job is Complete or Failed; it always goes with the job.
    #[arg(long, env = "TRAINJOB_KEEP_SSH_SECRETS")]
    keep_ssh_secrets: bool,
    /// Give each TrainJob a NetworkPolicy: its pods accept connections only from the same job's
    /// pods (on the ports the runtime declares, else any). Needs a network plugin that enforces
    /// NetworkPolicies.
    #[arg(long, env = "TRAINJOB_NETWORK_POLICIES")]
    network_policies: bool,
    /// How long a job may stay stalled by an image that cannot be pulled, a container that cannot
    /// be created (a missing Secret, ConfigMap or key) or one that keeps crashing, before it
    /// fails with that reason; `0s` waits for ever (the reason stays on the job).
    #[arg(long, env = "TRAINJOB_STALL_TIMEOUT", default_value = "5m", value_parser = parse_timeout)]
    stall_timeout: std::time::Duration,
    /// Address of the HTTPS admission webhook.
    #[arg(long, env = "TRAINJOB_WEBHOOK_ADDR", default_value = "0.0.0.0:9443")]
    webhook_addr: std::net::SocketAddr,
    /// Do not serve the admission webhook (when no webhook configuration points at this process).
    #[arg(long, env = "TRAINJOB_DISABLE_WEBHOOK")]
    disable_webhook: bool,
    /// Serve `tls.crt` and `tls.key` from this directory (written by cert-manager, for example)
    /// instead of a self-managed certificate.
    #[arg(long, env = "TRAINJOB_WEBHOOK_CERT_DIR")]
    webhook_cert_dir: Option<PathBuf>,
    /// Service in front of the webhook: the self-managed certificate is for
    /// `<service>.<namespace>.svc` (and the cluster-domain form).
    #[arg(
        long,
        env = "TRAINJOB_WEBHOOK_SERVICE",
        default_value = "trainjob-operator-webhook"
    )]
    webhook_service: String,
    /// More host names or IP addresses for the self-managed certificate, comma-separated (for
    /// webhooks registered by URL).
    #[arg(long, env = "TRAINJOB_WEBHOOK_HOSTS", value_delimiter = ',')]
    webhook_hosts: Vec<String>,
    /// Lifetime of a self-managed certificate (`90d`, `12h`, `600s`); renewed with a third left.
    #[arg(long, env = "TRAINJOB_WEBHOOK_CERT_VALIDITY", default_value = "90d", value_parser = parse_duration)]
    webhook_cert_validity: std::time::Duration,
    /// Name of the Mutating- and ValidatingWebhookConfiguration whose `caBundle` the operator
    /// keeps current (self-managed certificates only).
    #[arg(
        long,
        env = "TRAINJOB_WEBHOOK_CONFIGURATION",
        default_value = "trainjob-operator"
    )]
    webhook_configuration: String,
    /// Address of the HTTPS status server, where training code reports progress (served with
    /// the webhook's certificate, behind the webhook Service).
    #[arg(long, env = "TRAINJOB_STATUS_SERVER_ADDR", default_value = "0.0.0.0:10443")]
    status_server_addr: std::net::SocketAddr,
    /// The status server's URL as pods reach it; by default
    /// `https://<webhook service>.<namespace>.svc:<port of --status-server-addr>`.
    #[arg(long, env = "TRAINJOB_STATUS_SERVER_URL")]
    status_server_url: Option<String>,
    /// Do not serve the status server, and give jobs' pods no progress variables (also off with
    /// --disable-webhook).
    #[arg(long, env = "TRAINJOB_DISABLE_STATUS_SERVER")]
    disable_status_server: bool,
    /// Namespace the operator runs in; its webhook certificate Secret lives there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "trainjob-system")]
    namespace: String,
    /// Campaign for a Lease in the operator's namespace and reconcile only while holding it, so
    /// that several replicas can run (config/manager runs two): one reconciles, all serve the
    /// webhook. Off: this process always reconciles, and must be the only one.
    #[arg(long, env = "TRAINJOB_LEADER_ELECT")]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(
        long,
        env = "TRAINJOB_LEADER_ELECT_LEASE_NAME",
        default_value = "trainjob-operator"
    )]
    leader_elect_lease_name: String,
    /// How long the other replicas wait after the leader's last renewal before taking over.
    #[arg(long, env = "TRAINJOB_LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    leader_elect_lease_duration: std::time::Duration,
    /// How long the leader keeps reconciling without renewing the Lease; shorter than the lease
    /// duration, so it stops before anyone else may start.
    #[arg(long, env = "TRAINJOB_LEADER_ELECT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    leader_elect_renew_deadline: std::time::Duration,
    /// How often the leader renews the Lease and the others try to take it.
    #[arg(long, env = "TRAINJOB_LEADER_ELECT_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    leader_elect_retry_period: std::time::Duration,
    /// Log format: `text` (coloured only on a terminal) or `json` (one object per line).
    #[arg(long, env = "TRAINJOB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn main() -> anyhow::Result<()> {
    trainjob_operator::runtime::run(operator()).context("starting the async runtime")?
}

async fn operator() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(*args).await,
        Command::Version => {
            println!("trainjob-operator {}", trainjob_operator::VERSION);
            Ok(())
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use trainjob_operator::{controller, leader, metrics::Metrics, server, webhook};

    logging::init(args.log_format);
    if args.fips && !args.ssh_key_algorithm.fips_approved() {
        anyhow::bail!(
            "--ssh-key-algorithm {} is not FIPS-approved; use ecdsa-p256, ecdsa-p384, ecdsa-p521 or rsa-3072",
            args.ssh_key_algorithm
        );
    }
    let timing = leader::Timing {
        lease: args.leader_elect_lease_duration,
        renew_deadline: args.leader_elect_renew_deadline,
        retry: args.leader_elect_retry_period,
    };
    if args.leader_elect {
        timing.check().map_err(anyhow::Error::msg)?;
    }

    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let stop_on_webhook_failure = stop_tx.clone();
    tokio::spawn(async move {
        trainjob_operator::shutdown::signal().await;
        tracing::info!("shutting down: finishing in-flight reconciles");
        let _ = stop_tx.send(true);
    });
    let webhook_ready = (!args.disable_webhook).then(|| Arc::new(AtomicBool::new(false)));
    let leading = args.leader_elect.then(|| Arc::new(AtomicBool::new(false)));
    let health = server::Health {
        metrics: metrics.clone(),
        ready: ready.clone(),
        webhook: webhook_ready.clone(),
        leading: leading.clone(),
    };
    let http = tokio::spawn(server::serve(args.http_addr, health, stopped()));

    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (set KUBECONFIG or run in a pod)")?;
    let limits = trainjob_operator::validate::Limits {
        max_pods_per_job: args.max_pods_per_job,
    };
    // Admission and reconciles read runtimes from one cache, which the webhook needs on every
    // replica, leading or not.
    let runtimes = trainjob_operator::runtimes::Cache::start(&client);
    let (trust, trusted) = tokio::sync::watch::channel(None);
    let progress = (webhook_ready.is_some() && !args.disable_status_server).then(|| {
        let url = args.status_server_url.clone().unwrap_or_else(|| {
            trainjob_operator::progress::base_url(
                &args.webhook_service,
                &args.namespace,
                args.status_server_addr.port(),
            )
        });
        (
            trainjob_operator::progress::Serving {
                addr: args.status_server_addr,
                trust: Arc::new(trust),
            },
            trainjob_operator::progress::Reporting { url, trust: trusted },
        )
    });
    let (serving, reporting) = progress.unzip();
    let webhook = match webhook_ready {
        Some(webhook_ready) => {
            let certs = match args.webhook_cert_dir {
                Some(dir) => webhook::certs::Source::Files(dir),
                None => webhook::certs::Source::SelfManaged(webhook::certs::SelfManaged::for_service(
                    &args.webhook_service,
                    &args.namespace,
                    &args.cluster_domain,
                    args.webhook_hosts,
                    args.webhook_cert_validity,
                    &args.webhook_configuration,
                )),
            };
            let settings = webhook::Settings {
                addr: args.webhook_addr,
                certs,
                limits,
                fips: args.fips,
                progress: serving,
            };
            let serve = webhook::serve(
                client.clone(),
                settings,
                metrics.clone(),
                runtimes.clone(),
                webhook_ready,
                stopped(),
            );
            // A webhook that cannot serve (its port taken, say) leaves every TrainJob create
            // refused: stop the process, so that it is restarted and the failure is seen.
            Some(tokio::spawn(async move {
                let result = serve.await;
                if let Err(e) = &result {
                    tracing::error!(error = %e, "the admission webhook stopped; shutting down");
                    let _ = stop_on_webhook_failure.send(true);
                }
                result
            }))
        }
        None => None,
    };
    let version = client
        .apiserver_version()
        .await
        .context("asking the API server for its version")?;
    kube::Api::<api::TrainJob>::all(client.clone())
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .context("listing TrainJobs failed; are the CRDs installed? (kubectl apply --server-side -k crds)")?;
    tracing::info!(version = trainjob_operator::VERSION, server = %version.git_version, ssh_key_algorithm = %args.ssh_key_algorithm, "connected; watching TrainJobs");

    let instance = std::env::var("POD_NAME").unwrap_or_else(|_| "trainjob-operator".into());
    let settings = controller::Settings {
        ssh_algorithm: args.ssh_key_algorithm,
        concurrency: args.concurrency,
        instance: instance.clone(),
        limits,
        cluster: trainjob_operator::plan::Cluster {
            domain: args.cluster_domain,
            network_policies: args.network_policies,
            stall_timeout: args.stall_timeout,
            reporting: None,
        },
        keep_ssh_secrets: args.keep_ssh_secrets,
        progress: reporting,
    };
    let memory = Arc::new(controller::Memory::new(metrics.clone()));
    let reconcile = controller::run(
        client.clone(),
        settings,
        runtimes,
        metrics.clone(),
        memory,
        ready,
        stopped(),
    );
    match leading {
        Some(leading) => {
            let elector = leader::Elector::new(
                client,
                leader::Settings {
                    namespace: args.namespace,
                    name: args.leader_elect_lease_name,
                    identity: leader::identity(&instance),
                    timing,
                },
            );
            // A lost Lease ends the process: its reconciles were dropped mid-flight, and a
            // restart rejoins the election with nothing left over.
            leader::lead(elector, leading, metrics, stopped(), reconcile)
                .await
                .context("exiting so that a restart rejoins the leader election")?;
        }
        None => {
            metrics.leader.set(1);
            reconcile.await;
        }
    }
    http.await.context("HTTP server task")?.context("HTTP server")?;
    if let Some(webhook) = webhook {
        webhook.await.context("webhook task")?.context("webhook server")?;
    }
    tracing::info!("stopped");
    Ok(())
}
