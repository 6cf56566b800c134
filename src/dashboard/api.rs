//! The dashboard's JSON API, every call made as the person asking (see `identity`). Its shapes
//! are documented by `openapi.json`, which the server also serves.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};

use super::identity::{Identity, IdentityError};
use crate::api::TrainJob;
use crate::cli::{in_time_order, merge_logs};
use crate::view::JobView;
use crate::view::fetch::{self, FetchError};
use crate::view::logs::{self, Selection};

/// The most a submitted job may weigh (a TrainJob is a few KiB).
pub const MAX_BODY: usize = 256 * 1024;

/// A refusal, as every failing API call answers: the HTTP status, the Kubernetes reason, one
/// sentence that says what to do, and the fields it is about (from admission or the schema).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct Problem {
    pub code: u16,
    pub reason: String,
    pub message: String,
    /// Absent when the refusal is about no field in particular.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldProblem>,
}

/// One field a refusal is about.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct FieldProblem {
    pub field: String,
    pub message: String,
}

impl Problem {
    pub(super) fn new(code: u16, reason: &str, message: impl Into<String>) -> Problem {
        Problem {
            code,
            reason: reason.into(),
            message: message.into(),
            fields: Vec::new(),
        }
    }

    /// The API server's refusal of `doing`, with its field causes.
    fn from_kube(e: kube::Error, doing: &str) -> Problem {
        match e {
            kube::Error::Api(status) => {
                let fields = status
                    .details
                    .iter()
                    .flat_map(|d| &d.causes)
                    .filter(|c| !c.field.is_empty())
                    .map(|c| FieldProblem {
                        field: c.field.clone(),
                        message: c.message.clone(),
                    })
                    .collect();
                Problem {
                    code: status.code,
                    reason: status.reason.clone(),
                    message: FetchError::new(kube::Error::Api(status), doing).to_string(),
                    fields,
                }
            }
            other => Problem::from(FetchError::new(other, doing)),
        }
    }
}

impl From<FetchError> for Problem {
    fn from(e: FetchError) -> Problem {
        let reason = match &e {
            FetchError::JobNotFound { .. } | FetchError::NotFound { .. } => "NotFound",
            FetchError::Forbidden { .. } => "Forbidden",
            FetchError::Refused { .. } => "Refused",
            FetchError::Unreachable { .. } => "ClusterUnreachable",
        };
        Problem::new(e.status(), reason, e.to_string())
    }
}

impl From<IdentityError> for Problem {
    fn from(e: IdentityError) -> Problem {
        Problem::new(401, "Unauthorized", e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::BAD_GATEWAY);
        (code, Json(self)).into_response()
    }
}

type Answer<T> = Result<T, Problem>;

fn caller(identity: &Identity, headers: &HeaderMap) -> Answer<Client> {
    Ok(identity.client(headers)?)
}

/// One job in the list: its view and when it was created.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Listed {
    #[serde(flatten)]
    pub view: JobView,
    pub created: Option<Time>,
}

/// `GET /api/namespaces/{ns}/trainjobs`: every job of the namespace with its view.
pub async fn list(
    State(identity): State<Arc<Identity>>,
    headers: HeaderMap,
    Path(ns): Path<String>,
) -> Answer<Json<serde_json::Value>> {
    let client = caller(&identity, &headers)?;
    let items: Vec<Listed> = fetch::list(&client, Some(&ns))
        .await?
        .into_iter()
        .map(|(view, created)| Listed { view, created })
        .collect();
    Ok(Json(serde_json::json!({ "items": items })))
}

/// One job with all of its view, and what its owner wrote on it.
#[derive(Serialize, schemars::JsonSchema)]
pub struct Detailed {
    #[serde(flatten)]
    pub view: JobView,
    /// When the job was created.
    pub created: Option<Time>,
    /// The job's labels.
    pub labels: BTreeMap<String, String>,
    /// The job's annotations (but kubectl's copy of the last applied manifest).
    pub annotations: BTreeMap<String, String>,
}

/// `GET /api/namespaces/{ns}/trainjobs/{name}`: the whole view of one job.
pub async fn get(
    State(identity): State<Arc<Identity>>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Answer<Json<Detailed>> {
    let client = caller(&identity, &headers)?;
    let job = fetch::job(&client, &ns, &name).await?;
    let view = fetch::describe_job(&client, &job).await?;
    let mut annotations = job.annotations().clone();
    // kubectl's copy of the whole manifest says nothing new and would crowd the page.
    annotations.remove(crate::names::LAST_APPLIED_ANNOTATION);
    Ok(Json(Detailed {
        view,
        created: job.metadata.creation_timestamp.clone(),
        labels: job.labels().clone(),
        annotations,
    }))
}

/// A runtime a job may reference.
#[derive(Serialize, schemars::JsonSchema)]
pub struct RuntimeRow {
    /// `ClusterTrainingRuntime` or `TrainingRuntime`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// The MPI hosts it runs by default.
    #[serde(rename = "numNodes")]
    pub num_nodes: Option<i32>,
}

/// `GET /api/namespaces/{ns}/runtimes`: the cluster's runtimes and the namespace's, those the
/// user may read (a refusal of either kind leaves it out).
pub async fn runtimes(
    State(identity): State<Arc<Identity>>,
    headers: HeaderMap,
    Path(ns): Path<String>,
) -> Answer<Json<serde_json::Value>> {
    use crate::api::{ClusterTrainingRuntime, TrainingRuntime};
    let client = caller(&identity, &headers)?;
    let params = kube::api::ListParams::default();
    let (cluster, namespaced) = (
        Api::<ClusterTrainingRuntime>::all(client.clone()),
        Api::<TrainingRuntime>::namespaced(client, &ns),
    );
    let (cluster, namespaced) = futures::join!(cluster.list(&params), namespaced.list(&params));
    let row = |kind: &str, name: String, nodes: Option<i32>| RuntimeRow {
        kind: kind.into(),
        name,
        num_nodes: nodes,
    };
    let mut items: Vec<RuntimeRow> = Vec::new();
    for rt in cluster.map(|l| l.items).unwrap_or_default() {
        let nodes = rt.spec.ml_policy.as_ref().and_then(|p| p.num_nodes);
        items.push(row("ClusterTrainingRuntime", rt.name_any(), nodes));
    }
    for rt in namespaced.map(|l| l.items).unwrap_or_default() {
        let nodes = rt.spec.ml_policy.as_ref().and_then(|p| p.num_nodes);
        items.push(row("TrainingRuntime", rt.name_any(), nodes));
    }
    Ok(Json(serde_json::json!({ "items": items })))
}

/// What one pod uses now, from `metrics.k8s.io`.
#[derive(Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// The pod's name.
    pub pod: String,
    /// CPU in millicores, all containers together.
    pub cpu_millicores: f64,
    /// Memory (working set) in bytes, all containers together.
    pub memory_bytes: f64,
}

/// `GET /api/namespaces/{ns}/trainjobs/{name}/usage`: CPU and memory of the job's pods, where
/// the cluster serves `metrics.k8s.io` (`available: false` where it does not, or the user may
/// not read it).
pub async fn usage(
    State(identity): State<Arc<Identity>>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Answer<Json<serde_json::Value>> {
    let client = caller(&identity, &headers)?;
    let selector = format!("{}={name}", crate::names::TRAINJOB_NAME_LABEL);
    let uri = format!(
        "/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector={}",
        selector.replace('=', "%3D")
    );
    let request = axum::http::Request::get(uri)
        .body(Vec::new())
        .map_err(|e| Problem::new(500, "InternalError", e.to_string()))?;
    let Ok(listed) = client.request::<serde_json::Value>(request).await else {
        return Ok(Json(serde_json::json!({"available": false, "pods": []})));
    };
    let pods: Vec<Usage> = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|pod| {
            let containers = pod["containers"].as_array().into_iter().flatten();
            let (cpu, memory) = containers.fold((0.0, 0.0), |(cpu, memory), c| {
                let quantity = |what: &str| {
                    let text = c["usage"][what].as_str().unwrap_or_default();
                    crate::quota::parse(&Quantity(text.into())).unwrap_or(0.0)
                };
                (cpu + quantity("cpu") * 1000.0, memory + quantity("memory"))
            });
            Usage {
                pod: pod["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                cpu_millicores: cpu,
                memory_bytes: memory,
            }
        })
        .collect();
    Ok(Json(serde_json::json!({"available": true, "pods": pods})))
}

/// `POST /api/namespaces/{ns}/trainjobs`: creates the TrainJob in the body (JSON, or YAML with
/// `Content-Type: application/yaml`) in `ns`; the API server and the webhook judge it.
pub async fn create(
    State(identity): State<Arc<Identity>>,
    headers: HeaderMap,
    Path(ns): Path<String>,
    body: axum::body::Bytes,
) -> Answer<(StatusCode, Json<serde_json::Value>)> {
    let client = caller(&identity, &headers)?;
    let yaml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("yaml"));
    let job: Result<TrainJob, String> = match yaml {
        true => std::str::from_utf8(&body)
            .map_err(|e| e.to_string())
            .and_then(|text| serde_saphyr::from_str(text).map_err(|e| e.to_string())),
        false => serde_json::from_slice(&body).map_err(|e| e.to_string()),
    };
    let mut job = job.map_err(|e| {
        Problem::new(
            400,
            "BadRequest",
            format!("the body is not a TrainJob ({e}); send one TrainJob as JSON or YAML"),
        )
    })?;
    if job.metadata.namespace.as_ref().is_some_and(|n| n != &ns) {
        return Err(Problem::new(
            400,
            "BadRequest",
            format!("metadata.namespace says another namespace than {ns}; leave it out or make it {ns}"),
        ));
    }
    job.metadata.namespace = Some(ns.clone());
    let name = job.name_any();
    let created = Api::<TrainJob>::namespaced(client, &ns)
        .create(&PostParams::default(), &job)
        .await
        .map_err(|e| Problem::from_kube(e, &format!("creating TrainJob {name} in namespace {ns}")))?;
    let body = serde_json::json!({"namespace": ns, "name": created.name_any()});
    Ok((StatusCode::CREATED, Json(body)))
}

/// `DELETE /api/namespaces/{ns}/trainjobs/{name}`: deletes the job (its pods go with it).
pub async fn delete(
    State(identity): State<Arc<Identity>>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Answer<Json<serde_json::Value>> {
    let client = caller(&identity, &headers)?;
    let doing = format!("deleting TrainJob {name} in namespace {ns}");
    Api::<TrainJob>::namespaced(client, &ns)
        .delete(&name, &DeleteParams::background())
        .await
        .map_err(|e| Problem::from_kube(e, &doing))?;
    Ok(Json(
        serde_json::json!({"namespace": ns, "name": name, "deleted": true}),
    ))
}

/// Which lines of the logs.
#[derive(Deserialize)]
pub struct LogQuery {
    /// Lines per pod from its end (at most 1000 when not given).
    tail: Option<i64>,
    /// Go on with every new line, as Server-Sent Events.
    #[serde(default)]
    follow: bool,
}

/// `GET /api/namespaces/{ns}/trainjobs/{name}/logs`: the launcher's and every worker's logs,
/// merged in time order, each line prefixed with its role and index: plain text, or with
/// `follow=true` Server-Sent Events (`line` for each line, `end`, or `problem`).
pub async fn logs(
    State(identity): State<Arc<Identity>>,
    headers: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    Query(query): Query<LogQuery>,
) -> Answer<Response> {
    let client = caller(&identity, &headers)?;
    let sel = Selection {
        tail: query.tail.or(Some(1000)),
        ..Selection::default()
    };
    let read = logs::read(&client, &ns, &name, &sel).await?;
    if !query.follow {
        let text = merge_logs(&read.logs, false);
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    let line = |prefix: &str, line: &str| {
        let (at, text) = line.split_once(' ').unwrap_or((line, ""));
        let data = serde_json::json!({"prefix": prefix, "at": at, "text": text});
        Ok::<_, Infallible>(Event::default().event("line").data(data.to_string()))
    };
    // What was written so far, in time order, then every new line.
    let first: Vec<_> = in_time_order(&read.logs)
        .into_iter()
        .map(|(p, l)| line(p, l))
        .collect();
    let then = logs::follow(client, ns, name, sel, read).map(move |l| match l {
        Ok(l) => line(&l.prefix, &l.line),
        Err(e) => {
            let said = serde_json::json!({"message": e.to_string()});
            Ok(Event::default().event("problem").data(said.to_string()))
        }
    });
    let end = futures::stream::once(async { Ok(Event::default().event("end").data("{}")) });
    let events = futures::stream::iter(first).chain(then).chain(end);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}
