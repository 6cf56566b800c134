//! `kubectl trainjob`: follow TrainJobs without knowing their pods. Every request goes to the API
//! server as the user of the kubeconfig (so RBAC decides what it shows); what it prints is built
//! by the pure `trainjob_operator::cli` from the job view (`trainjob_operator::view`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use trainjob_operator::api::TrainJob;
use trainjob_operator::cli::{self, ListOptions};
use trainjob_operator::view::{self, JobView, Sources};

mod logs;
mod reads;
use reads::{connect, fail, said};
use trainjob_operator::view::fetch::{describe, job, list, pods_of};

/// Follow Kubeflow TrainJobs: list, describe, logs, submit, cancel, resume, wait.
#[derive(Parser)]
#[command(name = "kubectl-trainjob", version = trainjob_operator::VERSION, bin_name = "kubectl trainjob")]
struct Cli {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Namespace (default: the context's, else `default`).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// Output format.
    #[arg(short, long, global = true, value_enum)]
    output: Option<Output>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Json,
    Yaml,
    Wide,
}

#[derive(Subcommand)]
enum Command {
    /// TrainJobs with their phase, progress, nodes ready, restarts, age and reason.
    #[command(alias = "ls", alias = "get")]
    List {
        /// In every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// One job: conditions, diagnosis, pods, timeline and Events.
    Describe { name: String },
    /// The launcher's and every worker's logs, merged in time order, each line prefixed with its pod's role and index (`-o wide`: and node).
    Logs {
        name: String,
        /// Only this role's pods (`launcher`, `node`).
        #[arg(long)]
        role: Option<String>,
        /// Only the pods with this index.
        #[arg(long)]
        index: Option<i32>,
        /// Lines per pod from its end.
        #[arg(long)]
        tail: Option<i64>,
        /// Only lines newer than this many seconds.
        #[arg(long)]
        since: Option<i64>,
        /// Print each line's time.
        #[arg(long)]
        timestamps: bool,
        /// Keep printing new lines, also from the pods of a restarted gang, until the job ends.
        #[arg(short, long)]
        follow: bool,
    },
    /// Create the TrainJobs in a YAML file.
    #[command(alias = "create")]
    Submit {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Delete a job (its pods go with it), or with --suspend stop its pods and keep it.
    Cancel {
        name: String,
        #[arg(long)]
        suspend: bool,
    },
    /// Resume a suspended job.
    Resume { name: String },
    /// Wait until a job is complete, failed or running; exit 1 if it ends otherwise or time runs out.
    Wait {
        name: String,
        #[arg(long = "for", value_enum)]
        until: Until,
        /// How long to wait (`90s`, `10m`).
        #[arg(long, default_value = "10m", value_parser = trainjob_operator::flags::parse_duration)]
        timeout: Duration,
    },
    /// Serve the dashboard (the page and its API) on this machine, acting as the kubeconfig's
    /// user (like `kubectl proxy`: anyone who can reach the address acts as you, so it listens
    /// on loopback).
    Dashboard {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
        /// Port to listen on (0: any free one).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Shell completions: `kubectl trainjob completion bash > /etc/bash_completion.d/kubectl-trainjob`.
    Completion { shell: clap_complete::Shell },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Until {
    Complete,
    Failed,
    Running,
}

/// A failure, said in one line.
type Failure = String;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(line) => {
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "kubectl-trainjob",
            &mut std::io::stdout(),
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (client, default_ns) = connect(&cli).await?;
    let ns = cli.namespace.clone().unwrap_or(default_ns);
    let now = k8s_openapi::jiff::Timestamp::now();
    match cli.command {
        Command::List { all_namespaces } => {
            let views = list(&client, (!all_namespaces).then_some(ns.as_str()))
                .await
                .map_err(fail)?;
            match cli.output {
                Some(Output::Json | Output::Yaml) => {
                    let views: Vec<&JobView> = views.iter().map(|(v, _)| v).collect();
                    print_as(cli.output, &views)?;
                }
                _ => {
                    let options = ListOptions {
                        namespaces: all_namespaces,
                        wide: cli.output == Some(Output::Wide),
                    };
                    if views.is_empty() {
                        eprintln!(
                            "No TrainJobs found{}.",
                            if all_namespaces {
                                String::new()
                            } else {
                                format!(" in namespace {ns}")
                            }
                        );
                    } else {
                        let table = cli::list(&views, options, now);
                        // Colour only for a person at a terminal (and never with NO_COLOR).
                        let colour = std::io::IsTerminal::is_terminal(&std::io::stdout())
                            && std::env::var_os("NO_COLOR").is_none();
                        match colour {
                            true => print!("{}", cli::paint_phases(&table)),
                            false => print!("{table}"),
                        }
                    }
                }
            }
        }
        Command::Describe { name } => {
            let view = describe(&client, &ns, &name).await.map_err(fail)?;
            match cli.output {
                Some(Output::Json | Output::Yaml) => print_as(cli.output, &view)?,
                _ => print!("{}", cli::describe(&view, now)),
            }
        }
        Command::Logs {
            name,
            role,
            index,
            tail,
            since,
            timestamps,
            follow,
        } => {
            let selection = trainjob_operator::view::logs::Selection {
                role,
                index,
                tail,
                since,
                host: cli.output == Some(Output::Wide),
            };
            logs::print(&client, &ns, &name, selection, timestamps, follow).await?;
        }
        Command::Submit { file } => {
            let text =
                std::fs::read_to_string(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
            let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
                .map_err(|e| format!("{} is not YAML: {e}", file.display()))?;
            for doc in docs.into_iter().filter(|d| !d.is_null()) {
                let job: TrainJob = serde_json::from_value(doc)
                    .map_err(|e| format!("{} is not a TrainJob: {e}", file.display()))?;
                let ns = job.namespace().unwrap_or_else(|| ns.clone());
                let created = Api::<TrainJob>::namespaced(client.clone(), &ns)
                    .create(&PostParams::default(), &job)
                    .await
                    .map_err(|e| {
                        said(
                            e,
                            &format!("creating TrainJob {} in namespace {ns}", job.name_any()),
                        )
                    })?;
                println!("trainjob.trainer.kubeflow.org/{} created", created.name_any());
            }
        }
        Command::Cancel { name, suspend } => {
            let jobs: Api<TrainJob> = Api::namespaced(client.clone(), &ns);
            if suspend {
                set_suspend(&jobs, &name, true).await?;
                println!("trainjob.trainer.kubeflow.org/{name} suspended");
            } else {
                jobs.delete(&name, &DeleteParams::background())
                    .await
                    .map_err(|e| said(e, &format!("deleting TrainJob {name} in namespace {ns}")))?;
                println!("trainjob.trainer.kubeflow.org/{name} deleted");
            }
        }
        Command::Resume { name } => {
            set_suspend(&Api::namespaced(client.clone(), &ns), &name, false).await?;
            println!("trainjob.trainer.kubeflow.org/{name} resumed");
        }
        Command::Dashboard { address, port } => {
            use trainjob_operator::dashboard;
            let listener = dashboard::listen((address, port).into())
                .await
                .map_err(|e| e.to_string())?;
            let bound = listener.local_addr().map_err(|e| e.to_string())?;
            eprintln!(
                "Serving the dashboard as your kubeconfig's user at http://{bound}/ (its API's \
                 description: http://{bound}/api/openapi.json). Ctrl-C stops it."
            );
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            dashboard::serve(listener, dashboard::Identity::Kubeconfig(client), stop)
                .await
                .map_err(|e| e.to_string())?;
        }
        Command::Wait { name, until, timeout } => return wait(&client, &ns, &name, until, timeout).await,
        Command::Completion { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_suspend(jobs: &Api<TrainJob>, name: &str, suspend: bool) -> Result<(), Failure> {
    jobs.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"suspend": suspend}})),
    )
    .await
    .map(|_| ())
    .map_err(|e| {
        said(
            e,
            &format!(
                "{} TrainJob {name}",
                if suspend { "suspending" } else { "resuming" }
            ),
        )
    })
}

async fn wait(
    client: &Client,
    ns: &str,
    name: &str,
    until: Until,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    use trainjob_operator::lifecycle::Phase;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let job = job(client, ns, name).await.map_err(fail)?;
        let pods = pods_of(client, ns, name).await.map_err(fail)?;
        let phase = trainjob_operator::lifecycle::phase_of(&job, &pods);
        let reached = match until {
            Until::Complete => phase == Phase::Complete,
            Until::Failed => phase == Phase::Failed,
            Until::Running => phase == Phase::Running,
        };
        if reached {
            println!("trainjob.trainer.kubeflow.org/{name} {phase:?}");
            return Ok(ExitCode::SUCCESS);
        }
        if matches!(phase, Phase::Complete | Phase::Failed) {
            let view = view::view(
                &job,
                Sources {
                    pods: &pods,
                    ..Sources::default()
                },
            );
            let why = view
                .diagnosis
                .map(|d| format!(": {} {}", d.reason, d.message))
                .unwrap_or_default();
            return Err(format!("TrainJob {name} ended {phase:?}{why}"));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "timed out after {timeout:?} waiting for TrainJob {name} to be {}; it is {phase:?}",
                match until {
                    Until::Complete => "complete",
                    Until::Failed => "failed",
                    Until::Running => "running",
                }
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn print_as<T: serde::Serialize>(output: Option<Output>, value: &T) -> Result<(), Failure> {
    let text = match output {
        Some(Output::Yaml) => serde_saphyr::to_string(value).map_err(|e| e.to_string())?,
        _ => serde_json::to_string_pretty(value).map_err(|e| e.to_string())? + "\n",
    };
    print!("{text}");
    Ok(())
}
