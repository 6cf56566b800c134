//! `kubectl trainjob logs`: what every pod of a job has written so far, merged in time order;
//! with `--follow`, then every new line as it comes, from the pods there are now and from the
//! pods a container restart or a gang restart brings, until the job ends.

use std::collections::HashSet;
use std::io::Write;
use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use trainjob_operator::api::TrainJob;
use trainjob_operator::cli::{self, Printed};
use trainjob_operator::lifecycle::{Phase, phase_of};
use trainjob_operator::names;

use super::Failure;
use trainjob_operator::view::fetch::{job, pods_of};

use super::reads::{fail, said};

/// The container whose log is the job's: the MPI runtimes name it `node` in every pod.
const CONTAINER: &str = "node";

/// How long lines may still arrive once the job has ended (its pods are being stopped).
const DRAIN: Duration = Duration::from_secs(10);

/// Which pods and lines to show.
pub struct Selection {
    pub role: Option<String>,
    pub index: Option<i32>,
    pub tail: Option<i64>,
    pub since: Option<i64>,
    pub timestamps: bool,
    pub follow: bool,
    /// Name each line's node too (`-o wide`).
    pub host: bool,
}

impl Selection {
    fn wants(&self, pod: &Pod) -> bool {
        let labels = pod.labels();
        self.role
            .as_ref()
            .is_none_or(|r| labels.get(names::JOB_ROLE_LABEL) == Some(r))
            && self
                .index
                .is_none_or(|i| labels.get(names::COMPLETION_INDEX_LABEL) == Some(&i.to_string()))
    }
}

/// The container of `pod` that has a log to read (running or ended), as `uid/container id`, so
/// that a restarted container is a new source.
fn source(pod: &Pod) -> Option<String> {
    let status = pod
        .status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTAINER)?;
    let started = status
        .state
        .as_ref()
        .is_some_and(|s| s.running.is_some() || s.terminated.is_some());
    let id = status.container_id.as_deref().filter(|_| started)?;
    Some(format!("{}/{id}", pod.uid()?))
}

pub async fn logs(client: &Client, ns: &str, name: &str, sel: Selection) -> Result<(), Failure> {
    job(client, ns, name).await.map_err(fail)?;
    let pods_api = Api::<Pod>::namespaced(client.clone(), ns);
    let pods: Vec<Pod> = pods_of(client, ns, name)
        .await
        .map_err(fail)?
        .into_iter()
        .filter(|p| sel.wants(p) && source(p).is_some())
        .collect();
    if pods.is_empty() && !sel.follow {
        return Err(format!(
            "TrainJob {name} has no started pods{} yet; `kubectl trainjob describe {name}` says why, \
             or add --follow to wait for them",
            sel.role
                .as_ref()
                .map(|r| format!(" of role {r}"))
                .unwrap_or_default()
        ));
    }
    let mut read = Vec::new();
    for pod in &pods {
        let params = LogParams {
            container: Some(CONTAINER.into()),
            timestamps: true,
            tail_lines: sel.tail,
            since_seconds: sel.since,
            ..Default::default()
        };
        let text = pods_api
            .logs(&pod.name_any(), &params)
            .await
            .map_err(|e| said(e, &format!("reading the log of pod {}", pod.name_any())))?;
        read.push((cli::log_prefix(pod, sel.host), text));
    }
    let mut out = std::io::stdout().lock();
    if out
        .write_all(cli::merge_logs(&read, sel.timestamps).as_bytes())
        .and_then(|()| out.flush())
        .is_err()
        || !sel.follow
    {
        return Ok(());
    }
    drop(out);

    let mut printed = Printed::default();
    for (pod, (_, text)) in pods.iter().zip(&read) {
        for line in text.lines() {
            printed.fresh(&pod.uid().unwrap_or_default(), line);
        }
    }
    follow(client, ns, name, &sel, pods, printed).await
}

/// A line from a pod's stream, or the end of that stream.
enum Streamed {
    Line {
        uid: String,
        prefix: String,
        line: String,
    },
    Ended,
}

async fn follow(
    client: &Client,
    ns: &str,
    name: &str,
    sel: &Selection,
    known: Vec<Pod>,
    mut printed: Printed,
) -> Result<(), Failure> {
    let pods_api = Api::<Pod>::namespaced(client.clone(), ns);
    let selector = format!("{}={name}", names::TRAINJOB_NAME_LABEL);
    let mut pods = watcher(pods_api.clone(), watcher::Config::default().labels(&selector))
        .default_backoff()
        .touched_objects()
        .boxed();
    let mut jobs = watcher(
        Api::<TrainJob>::namespaced(client.clone(), ns),
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff()
    .boxed();
    let (tx, mut rx) = mpsc::channel::<Streamed>(1024);
    let mut opened: HashSet<String> = HashSet::new();
    let mut open = 0usize;
    let start = |pod: &Pod, printed: &Printed, opened: &mut HashSet<String>| {
        let Some(key) = source(pod).filter(|_| sel.wants(pod)) else {
            return false;
        };
        if !opened.insert(key) {
            return false;
        }
        let uid = pod.uid().unwrap_or_default();
        // Reopen from the second of the newest line printed (duplicates are dropped); a pod
        // not read yet from its start.
        let since_time = printed
            .newest(&uid)
            .and_then(|at| at.parse::<k8s_openapi::jiff::Timestamp>().ok());
        let params = LogParams {
            container: Some(CONTAINER.into()),
            follow: true,
            timestamps: true,
            since_time,
            ..Default::default()
        };
        tokio::spawn(stream(
            pods_api.clone(),
            pod.name_any(),
            params,
            uid,
            cli::log_prefix(pod, sel.host),
            tx.clone(),
        ));
        true
    };
    for pod in &known {
        open += usize::from(start(pod, &printed, &mut opened));
    }
    let mut ended: Option<tokio::time::Instant> = None;
    let mut out = std::io::stdout().lock();
    loop {
        if let Some(at) = ended
            && (open == 0 || tokio::time::Instant::now() >= at)
        {
            return Ok(());
        }
        let drain = tokio::time::sleep_until(ended.unwrap_or_else(tokio::time::Instant::now));
        tokio::select! {
            Some(msg) = rx.recv() => match msg {
                Streamed::Line { uid, prefix, line } => {
                    if printed.fresh(&uid, &line)
                        && writeln!(out, "{}", cli::log_line(&prefix, &line, sel.timestamps))
                            .and_then(|()| out.flush())
                            .is_err()
                    {
                        // The reader went away (`| head`): done.
                        return Ok(());
                    }
                }
                // The key stays opened: a container that starts again has a new id.
                Streamed::Ended => open -= 1,
            },
            event = pods.try_next() => match event {
                Ok(Some(pod)) => open += usize::from(start(&pod, &printed, &mut opened)),
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("watching the pods of TrainJob {name}: {e}")),
            },
            event = jobs.try_next(), if ended.is_none() => match event {
                Ok(Some(watcher::Event::Delete(_))) => ended = Some(tokio::time::Instant::now() + DRAIN),
                Ok(Some(watcher::Event::Apply(job) | watcher::Event::InitApply(job))) => {
                    // The pods are not needed to tell a finished job: its condition says so.
                    if matches!(phase_of(&job, &[]), Phase::Complete | Phase::Failed) {
                        ended = Some(tokio::time::Instant::now() + DRAIN);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("watching TrainJob {name}: {e}")),
            },
            () = drain, if ended.is_some() => return Ok(()),
        }
    }
}

/// Streams one container's log into `tx`, line by line, until the container stops (or the pod
/// goes away), then says so.
async fn stream(
    api: Api<Pod>,
    pod: String,
    params: LogParams,
    uid: String,
    prefix: String,
    tx: mpsc::Sender<Streamed>,
) {
    if let Ok(reader) = api.log_stream(&pod, &params).await {
        let mut lines = reader.lines();
        while let Ok(Some(line)) = lines.try_next().await {
            let line = Streamed::Line {
                uid: uid.clone(),
                prefix: prefix.clone(),
                line,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    }
    let _ = tx.send(Streamed::Ended).await;
}
