//! What the job view needs, fetched as the caller: the kubectl plugin's user through their
//! kubeconfig, the dashboard's through their own token. Every request is the caller's, so RBAC
//! decides what they see; `list` is one paged list of jobs and one of their pods (and frozen
//! runtimes) however many jobs there are, never a request per job.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, LogParams};
use kube::{Client, ResourceExt};

use super::{JobView, Sources};
use crate::api::TrainJob;
use crate::desired::snapshot;
use crate::names;

/// A read that failed, said so that the person can act on it.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "TrainJob {name} not found in namespace {namespace}: `kubectl trainjob list -n {namespace}` shows its jobs"
    )]
    JobNotFound { namespace: String, name: String },
    #[error("{doing}: forbidden: {message}; ask an admin for access in that namespace")]
    Forbidden { doing: String, message: String },
    #[error("{doing}: not found")]
    NotFound { doing: String },
    #[error("{doing}: {message}")]
    Refused {
        doing: String,
        code: u16,
        message: String,
    },
    #[error("{doing}: cannot reach the cluster ({source}); check --kubeconfig and --context")]
    Unreachable {
        doing: String,
        #[source]
        source: kube::Error,
    },
}

impl FetchError {
    /// `e`, met while `doing` something.
    pub fn new(e: kube::Error, doing: &str) -> FetchError {
        let doing = doing.to_string();
        match e {
            kube::Error::Api(s) if s.code == 403 => FetchError::Forbidden {
                doing,
                message: s.message,
            },
            kube::Error::Api(s) if s.code == 404 => FetchError::NotFound { doing },
            kube::Error::Api(s) => FetchError::Refused {
                doing,
                code: s.code,
                message: s.message,
            },
            source => FetchError::Unreachable { doing, source },
        }
    }

    /// The HTTP status that says the same.
    pub fn status(&self) -> u16 {
        match self {
            FetchError::JobNotFound { .. } | FetchError::NotFound { .. } => 404,
            FetchError::Forbidden { .. } => 403,
            FetchError::Refused { code, .. } => *code,
            FetchError::Unreachable { .. } => 502,
        }
    }
}

/// TrainJob `name` of `ns`.
pub async fn job(client: &Client, ns: &str, name: &str) -> Result<TrainJob, FetchError> {
    match Api::<TrainJob>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
    {
        Ok(Some(job)) => Ok(job),
        Ok(None) => Err(FetchError::JobNotFound {
            namespace: ns.into(),
            name: name.into(),
        }),
        Err(e) => Err(FetchError::new(e, &format!("reading TrainJob {name}"))),
    }
}

/// Every page of a list, `limit` at a time.
async fn pages<K>(api: &Api<K>, params: ListParams, what: &str) -> Result<Vec<K>, FetchError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut params = params.limit(500);
    let mut items = Vec::new();
    loop {
        let page = api.list(&params).await.map_err(|e| FetchError::new(e, what))?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
}

/// The pods of TrainJob `job`.
pub async fn pods_of(client: &Client, ns: &str, job: &str) -> Result<Vec<Pod>, FetchError> {
    let params = ListParams::default().labels(&format!("{}={job}", names::TRAINJOB_NAME_LABEL));
    pages(
        &Api::<Pod>::namespaced(client.clone(), ns),
        params,
        &format!("listing the pods of TrainJob {job}"),
    )
    .await
}

/// Every job of `ns` (or all namespaces) with its view: one paged list of jobs and one of the
/// operator's pods, never a request per job.
pub async fn list(client: &Client, ns: Option<&str>) -> Result<Vec<(JobView, Option<Time>)>, FetchError> {
    let (jobs, pods): (Api<TrainJob>, Api<Pod>) = match ns {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let where_ = ns.map_or_else(
        || "in any namespace".to_string(),
        |ns| format!("in namespace {ns}"),
    );
    let configmaps: Api<ConfigMap> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (all, managed) = selectors(None);
    let (jobs_doing, pods_doing) = (
        format!("listing TrainJobs {where_}"),
        format!("listing the TrainJobs' pods {where_}"),
    );
    // The three lists at once: one round trip instead of three.
    let (jobs, pods, configmaps) = futures::join!(
        pages(&jobs, all, &jobs_doing),
        pages(&pods, managed.clone(), &pods_doing),
        pages(&configmaps, managed.clone(), "listing the frozen runtimes"),
    );
    let (jobs, pods) = (jobs?, pods?);
    // The frozen runtimes say how many nodes each job wants once its workers are gone; a user
    // who may not list ConfigMaps still gets the rest.
    let runtimes: std::collections::HashMap<(String, String), crate::resolve::Runtime> = configmaps
        .unwrap_or_default()
        .iter()
        .filter_map(|cm| {
            let job = cm.labels().get(names::TRAINJOB_NAME_LABEL)?.clone();
            (cm.name_any() == names::runtime_snapshot(&job)).then(|| {
                Some((
                    (cm.namespace().unwrap_or_default(), job),
                    snapshot::read(cm).ok()?,
                ))
            })?
        })
        .collect();
    let mut by_job: std::collections::HashMap<(String, String), Vec<Pod>> = Default::default();
    for pod in pods {
        if let Some(job) = pod.labels().get(names::TRAINJOB_NAME_LABEL).cloned() {
            by_job
                .entry((pod.namespace().unwrap_or_default(), job))
                .or_default()
                .push(pod);
        }
    }
    Ok(jobs
        .iter()
        .map(|job| {
            let key = (job.namespace().unwrap_or_default(), job.name_any());
            let pods = by_job.get(&key).map(Vec::as_slice).unwrap_or_default();
            let view = super::view(
                job,
                Sources {
                    runtime: runtimes.get(&key),
                    pods,
                    ..Sources::default()
                },
            );
            (view, job.metadata.creation_timestamp.clone())
        })
        .collect())
}

/// What to list of a namespace's jobs, and of their pods and ConfigMaps: all, or one job's.
pub fn selectors(only: Option<&str>) -> (ListParams, ListParams) {
    let managed = format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGED_BY);
    match only {
        None => (ListParams::default(), ListParams::default().labels(&managed)),
        Some(job) => (
            ListParams::default().fields(&format!("metadata.name={job}")),
            ListParams::default().labels(&format!("{managed},{}={job}", names::TRAINJOB_NAME_LABEL)),
        ),
    }
}

/// The whole view of one job: its pods, Events, frozen runtime and (when it failed) the launcher's log.
pub async fn describe(client: &Client, ns: &str, name: &str) -> Result<JobView, FetchError> {
    describe_job(client, &job(client, ns, name).await?).await
}

/// The whole view of `job`, read already.
pub async fn describe_job(client: &Client, job: &TrainJob) -> Result<JobView, FetchError> {
    let ns = job.metadata.namespace.as_deref().unwrap_or_default();
    let name = job.metadata.name.as_deref().unwrap_or_default();
    let pods = pods_of(client, ns, name).await?;
    let events = pages(
        &Api::<Event>::namespaced(client.clone(), ns),
        ListParams::default().fields(&format!("regarding.name={name},regarding.kind=TrainJob")),
        &format!("listing the Events of TrainJob {name}"),
    )
    .await?;
    // The frozen runtime is optional: a user who may not read ConfigMaps still gets the rest.
    let runtime = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&names::runtime_snapshot(name))
        .await
        .ok()
        .flatten()
        .and_then(|cm| snapshot::read(&cm).ok());
    let failed = crate::lifecycle::phase_of(job, &pods) == crate::lifecycle::Phase::Failed;
    let launcher_log = match failed {
        true => {
            let params = LogParams {
                container: Some("node".into()),
                tail_lines: Some(40),
                ..Default::default()
            };
            let launcher = pods
                .iter()
                .find(|p| p.labels().get(names::JOB_ROLE_LABEL).map(String::as_str) == Some("launcher"));
            match launcher {
                Some(p) => Api::<Pod>::namespaced(client.clone(), ns)
                    .logs(&p.name_any(), &params)
                    .await
                    .ok(),
                None => None,
            }
        }
        false => None,
    };
    Ok(super::view(
        job,
        Sources {
            runtime: runtime.as_ref(),
            pods: &pods,
            events: &events,
            launcher_log: launcher_log.as_deref(),
        },
    ))
}
