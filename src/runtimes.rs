//! The runtime a TrainJob references, from a watch cache or the API server. Shared by the first
//! reconcile and by admission, so both refuse a missing runtime in the same words.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::api::{ClusterTrainingRuntime, DEPRECATED, GROUP, SUPPORT_LABEL, TrainJob, TrainingRuntime};
use crate::listed::Listed;
use crate::reasons;
use crate::resolve::Runtime;

/// The caches' names in [`Cache::pending`].
const CLUSTER_RUNTIMES: &str = "clustertrainingruntimes";
const RUNTIMES: &str = "trainingruntimes";

/// Why the referenced runtime could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("Kubernetes API error while reading {kind} {name}: {source}")]
    Kube {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "{kind} \"{name}\" not found{}: create it, or point spec.runtimeRef at an existing one (kubectl get {}s)",
        .namespace.as_ref().map(|ns| format!(" in namespace {ns}")).unwrap_or_default(),
        .kind.to_lowercase()
    )]
    NotFound {
        kind: String,
        name: String,
        namespace: Option<String>,
    },
    #[error(
        "unsupported runtime: {kind}.{group}; spec.runtimeRef must name a TrainingRuntime or ClusterTrainingRuntime in {GROUP}"
    )]
    Unsupported { kind: String, group: String },
}

impl LookupError {
    /// The `Failed` reason when the user must act; `None` for API errors worth retrying.
    pub fn permanent(&self) -> Option<&'static str> {
        match self {
            LookupError::Kube { .. } => None,
            LookupError::NotFound { .. } | LookupError::Unsupported { .. } => {
                Some(reasons::RUNTIME_NOT_FOUND)
            }
        }
    }

    /// Stable label for the error metric.
    pub fn label(&self) -> &'static str {
        match self {
            LookupError::Kube { .. } => "read_kube",
            LookupError::NotFound { .. } => "runtime_not_found",
            LookupError::Unsupported { .. } => "unsupported_runtime",
        }
    }
}

/// Every runtime as the watch last saw it, so that admitting a job and its first reconcile read
/// no runtime from the API server. A runtime the cache does not hold (yet) is still read from
/// the API server, so one created a moment ago is found, and a missing one refused in the same
/// words.
#[derive(Clone)]
pub struct Cache {
    cluster: Store<ClusterTrainingRuntime>,
    namespaced: Store<TrainingRuntime>,
    listed: Arc<Listed>,
}

impl Cache {
    /// Starts watching both kinds of runtime on the current tokio runtime.
    pub fn start(client: &Client) -> Cache {
        let listed = Listed::new([CLUSTER_RUNTIMES, RUNTIMES]);
        let (cluster, writer) = reflector::store();
        let watch = watcher(
            Api::<ClusterTrainingRuntime>::all(client.clone()),
            Default::default(),
        )
        .default_backoff()
        .reflect(writer)
        .inspect_ok(listed.on_list(CLUSTER_RUNTIMES));
        tokio::spawn(watch.for_each(|_| async {}));
        let (namespaced, writer) = reflector::store();
        let watch = watcher(Api::<TrainingRuntime>::all(client.clone()), Default::default())
            .default_backoff()
            .reflect(writer)
            .inspect_ok(listed.on_list(RUNTIMES));
        tokio::spawn(watch.for_each(|_| async {}));
        Cache {
            cluster,
            namespaced,
            listed,
        }
    }

    /// Resolves once both kinds have been listed.
    pub async fn ready(&self) {
        self.listed.all().await;
    }

    /// The kinds not listed yet.
    pub fn pending(&self) -> Vec<&'static str> {
        self.listed.pending()
    }
}

fn deprecated(labels: &std::collections::BTreeMap<String, String>) -> bool {
    labels.get(SUPPORT_LABEL).map(String::as_str) == Some(DEPRECATED)
}

/// Fetches the runtime `job` references (from `cache` when it holds it); a TrainingRuntime only
/// from `namespace`, the job's own.
pub async fn fetch(
    client: &Client,
    cache: Option<&Cache>,
    job: &TrainJob,
    namespace: &str,
) -> Result<Runtime, LookupError> {
    let r = &job.spec.runtime_ref;
    let kind = r.kind.as_deref().unwrap_or("ClusterTrainingRuntime");
    let group = r.api_group.as_deref().unwrap_or(GROUP);
    let fetched = match (group, kind) {
        (GROUP, "ClusterTrainingRuntime") => {
            match cache.and_then(|c| c.cluster.get(&ObjectRef::new(&r.name))) {
                Some(rt) => Ok(Some((deprecated(rt.labels()), rt.spec.0.clone()))),
                None => Api::<ClusterTrainingRuntime>::all(client.clone())
                    .get_opt(&r.name)
                    .await
                    .map(|o| o.map(|rt| (deprecated(rt.labels()), rt.spec.0))),
            }
        }
        (GROUP, "TrainingRuntime") => {
            let key = ObjectRef::new(&r.name).within(namespace);
            match cache.and_then(|c| c.namespaced.get(&key)) {
                Some(rt) => Ok(Some((deprecated(rt.labels()), rt.spec.clone()))),
                None => Api::<TrainingRuntime>::namespaced(client.clone(), namespace)
                    .get_opt(&r.name)
                    .await
                    .map(|o| o.map(|rt| (deprecated(rt.labels()), rt.spec))),
            }
        }
        _ => {
            return Err(LookupError::Unsupported {
                kind: kind.into(),
                group: group.into(),
            });
        }
    }
    .map_err(|source| LookupError::Kube {
        kind: kind.into(),
        name: r.name.clone(),
        source,
    })?;
    let (deprecated, spec) = fetched.ok_or_else(|| LookupError::NotFound {
        kind: kind.into(),
        name: r.name.clone(),
        namespace: (kind == "TrainingRuntime").then(|| namespace.to_string()),
    })?;
    Ok(Runtime {
        label: format!("{kind}/{}", r.name),
        spec,
        deprecated,
    })
}
