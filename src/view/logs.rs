//! A job's logs as its caller reads them: what every started pod of the job has written so far
//! ([`read`]), and then ([`follow`]) every new line as it comes, from the pods there are and from
//! those a container restart or a gang restart brings, each line once, until the job ends. The
//! kubectl plugin prints them; the dashboard streams them to the browser.

use std::collections::HashSet;
use std::time::Duration;

use futures::{AsyncBufReadExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

use super::fetch::{FetchError, job, pods_of};
use crate::api::TrainJob;
use crate::cli::{Printed, log_prefix};
use crate::lifecycle::{Phase, phase_of};
use crate::names;

/// The container whose log is the job's: the MPI runtimes name it `node` in every pod.
const CONTAINER: &str = "node";

/// How long lines may still arrive once the job has ended (its pods are being stopped).
const DRAIN: Duration = Duration::from_secs(10);

/// Which pods and lines.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Only this role's pods (`launcher`, `node`).
    pub role: Option<String>,
    /// Only the pods with this index.
    pub index: Option<i32>,
    /// Lines per pod from its end (what is read first).
    pub tail: Option<i64>,
    /// Only lines newer than this many seconds (what is read first).
    pub since: Option<i64>,
    /// Name each line's node in its prefix.
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

/// One line of a pod's log: where it comes from (`[node-1]`) and the kubelet's line (its RFC
/// 3339 time, a space, the text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub prefix: String,
    pub line: String,
}

/// What the started pods of a job have written so far.
pub struct Read {
    /// The pods read.
    pub pods: Vec<Pod>,
    /// Each pod's prefix and log, in the order of `pods`.
    pub logs: Vec<(String, String)>,
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

/// What the job's started pods (those `sel` wants) have written so far.
pub async fn read(client: &Client, ns: &str, name: &str, sel: &Selection) -> Result<Read, FetchError> {
    job(client, ns, name).await?;
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    let pods: Vec<Pod> = pods_of(client, ns, name)
        .await?
        .into_iter()
        .filter(|p| sel.wants(p) && source(p).is_some())
        .collect();
    let mut logs = Vec::new();
    for pod in &pods {
        let params = LogParams {
            container: Some(CONTAINER.into()),
            timestamps: true,
            tail_lines: sel.tail,
            since_seconds: sel.since,
            ..Default::default()
        };
        let text = api
            .logs(&pod.name_any(), &params)
            .await
            .map_err(|e| FetchError::new(e, &format!("reading the log of pod {}", pod.name_any())))?;
        logs.push((log_prefix(pod, sel.host), text));
    }
    Ok(Read { pods, logs })
}

/// A line from a pod's stream, or the end of that stream.
enum Streamed {
    Line { uid: String, line: Line },
    Ended,
}

/// Every line written after `read`, as it comes, until the job is complete or failed (and its
/// containers have stopped, or [`DRAIN`] has passed) or deleted; a watch that fails ends the
/// stream with its error.
pub fn follow(
    client: Client,
    ns: String,
    name: String,
    sel: Selection,
    read: Read,
) -> impl Stream<Item = Result<Line, FetchError>> {
    let (tx, rx) = futures::channel::mpsc::channel(256);
    tokio::spawn(run(client, ns, name, sel, read, tx));
    rx
}

async fn run(
    client: Client,
    ns: String,
    name: String,
    sel: Selection,
    read: Read,
    mut out: futures::channel::mpsc::Sender<Result<Line, FetchError>>,
) {
    use futures::SinkExt;
    let mut printed = Printed::default();
    for (pod, (_, text)) in read.pods.iter().zip(&read.logs) {
        for line in text.lines() {
            printed.fresh(&pod.uid().unwrap_or_default(), line);
        }
    }
    let pods_api = Api::<Pod>::namespaced(client.clone(), &ns);
    let selector = format!("{}={name}", names::TRAINJOB_NAME_LABEL);
    let mut pods = watcher(pods_api.clone(), watcher::Config::default().labels(&selector))
        .default_backoff()
        .touched_objects()
        .boxed();
    let mut jobs = watcher(
        Api::<TrainJob>::namespaced(client.clone(), &ns),
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
            log_prefix(pod, sel.host),
            tx.clone(),
        ));
        true
    };
    for pod in &read.pods {
        open += usize::from(start(pod, &printed, &mut opened));
    }
    let mut ended: Option<tokio::time::Instant> = None;
    loop {
        if let Some(at) = ended
            && (open == 0 || tokio::time::Instant::now() >= at)
        {
            return;
        }
        let drain = tokio::time::sleep_until(ended.unwrap_or_else(tokio::time::Instant::now));
        let failed = tokio::select! {
            Some(msg) = rx.recv() => match msg {
                Streamed::Line { uid, line } => {
                    // The reader went away: done.
                    if printed.fresh(&uid, &line.line) && out.send(Ok(line)).await.is_err() {
                        return;
                    }
                    None
                }
                // The key stays opened: a container that starts again has a new id.
                Streamed::Ended => {
                    open -= 1;
                    None
                }
            },
            event = pods.try_next() => match event {
                Ok(Some(pod)) => {
                    open += usize::from(start(&pod, &printed, &mut opened));
                    None
                }
                Ok(None) => return,
                Err(e) => Some(FetchError::Refused {
                    doing: format!("watching the pods of TrainJob {name}"),
                    code: 502,
                    message: e.to_string(),
                }),
            },
            event = jobs.try_next(), if ended.is_none() => match event {
                Ok(Some(watcher::Event::Delete(_))) => {
                    ended = Some(tokio::time::Instant::now() + DRAIN);
                    None
                }
                Ok(Some(watcher::Event::Apply(job) | watcher::Event::InitApply(job))) => {
                    // The pods are not needed to tell a finished job: its condition says so.
                    if matches!(phase_of(&job, &[]), Phase::Complete | Phase::Failed) {
                        ended = Some(tokio::time::Instant::now() + DRAIN);
                    }
                    None
                }
                Ok(Some(_)) => None,
                Ok(None) => return,
                Err(e) => Some(FetchError::Refused {
                    doing: format!("watching TrainJob {name}"),
                    code: 502,
                    message: e.to_string(),
                }),
            },
            () = drain, if ended.is_some() => return,
        };
        if let Some(e) = failed {
            let _ = out.send(Err(e)).await;
            return;
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
                line: Line {
                    prefix: prefix.clone(),
                    line,
                },
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    }
    let _ = tx.send(Streamed::Ended).await;
}
