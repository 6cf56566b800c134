//! Training progress, as Kubeflow Trainer v2.3 takes it (KEP-2779): a status server, served
//! over TLS next to the admission webhook (same certificate, port 10443), where a job's own pods
//! POST `{"trainerStatus": {...}}` to `/apis/trainer.kubeflow.org/v1alpha1/namespaces/<ns>/
//! trainjobs/<name>/status` with the projected token the operator mounted for them
//! (`desired::reporting` puts the URL, CA and token paths in their environment). The Kubeflow
//! SDK's `update_trainjob_status()` and Hugging Face's `kubeflow` integration send exactly that.
//!
//! A report is let in (`auth`), held to a rate (`limit`), checked (`report`), and written with
//! server-side apply on the status subresource under its own field manager, so it never touches
//! the fields the reconciler owns. Every replica serves it; nothing here needs the leader.

pub mod auth;
pub mod limit;
pub mod report;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::api::{TrainJob, TrainerStatus};
use crate::metrics::{Metrics, ResultLabels};
use auth::{JobRef, Refusal, Reviewer};
use limit::Limiter;

/// The status server's port, as upstream's default configuration has it.
pub const PORT: u16 = 10443;
/// Field manager of progress writes (upstream's).
pub const FIELD_MANAGER: &str = "trainer-status";
/// Largest body taken (upstream's limit).
pub const MAX_BODY: usize = 1 << 16;

/// Where a job reports: the path under the server's URL.
pub fn path(namespace: &str, name: &str) -> String {
    format!("/apis/trainer.kubeflow.org/v1alpha1/namespaces/{namespace}/trainjobs/{name}/status")
}

/// The audience of a job's tokens: only that job's reports accept them.
pub fn audience(namespace: &str, name: &str) -> String {
    format!("trainer.kubeflow.org/v1alpha1/namespaces/{namespace}/trainjobs/{name}/status")
}

/// The server's URL as pods reach it: the webhook Service, on the status port.
pub fn base_url(service: &str, namespace: &str, port: u16) -> String {
    format!("https://{service}.{namespace}.svc:{port}")
}

/// How the status server is served: where, and where it publishes the CA that pods must trust.
#[derive(Clone, Debug)]
pub struct Serving {
    /// Address to serve HTTPS on.
    pub addr: SocketAddr,
    /// Receives the CA bundle of every certificate served.
    pub trust: Arc<tokio::sync::watch::Sender<Option<String>>>,
}

/// How the controller points a job's pods at the status server.
#[derive(Clone, Debug)]
pub struct Reporting {
    /// The server's URL as pods reach it ([`base_url`]).
    pub url: String,
    /// The CA bundle the server's certificate chains to, once known.
    pub trust: tokio::sync::watch::Receiver<Option<String>>,
}

impl Reporting {
    /// The URL and CA for jobs reconciled now; `None` until a certificate is served.
    pub fn current(&self) -> Option<crate::plan::Reporting> {
        let ca = self.trust.borrow().clone().filter(|ca| !ca.is_empty())?;
        Some(crate::plan::Reporting {
            url: self.url.clone(),
            ca,
        })
    }
}

struct Server {
    client: Client,
    metrics: Arc<Metrics>,
    reviewer: Reviewer,
    limiter: Limiter,
}

/// The router, separate from serving so tests can call it without TLS.
pub fn router(client: Client, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route(
            "/apis/trainer.kubeflow.org/v1alpha1/namespaces/{namespace}/trainjobs/{name}/status",
            post(report),
        )
        .fallback(|| async {
            Outcome::NotFound("no such endpoint: POST /apis/trainer.kubeflow.org/v1alpha1/namespaces/<namespace>/trainjobs/<name>/status".into())
                .into_response()
        })
        .with_state(Arc::new(Server {
            reviewer: Reviewer::new(client.clone()),
            client,
            metrics,
            limiter: Limiter::default(),
        }))
}

/// What became of one report.
#[derive(Debug)]
enum Outcome {
    Accepted(Option<TrainerStatus>),
    Refused(Refusal),
    RateLimited(Duration),
    TooLarge,
    Malformed(String),
    Invalid(String),
    NotFound(String),
    Failed(String),
}

impl Outcome {
    /// The metric label: fixed, never per job.
    fn label(&self) -> &'static str {
        match self {
            Outcome::Accepted(_) => "accepted",
            Outcome::Refused(Refusal::Unauthenticated(_)) => "unauthenticated",
            Outcome::Refused(Refusal::Forbidden(_)) => "forbidden",
            Outcome::Refused(Refusal::Unavailable(_)) | Outcome::Failed(_) => "error",
            Outcome::RateLimited(_) => "rate_limited",
            Outcome::TooLarge => "too_large",
            Outcome::Malformed(_) => "malformed",
            Outcome::Invalid(_) => "invalid",
            Outcome::NotFound(_) => "not_found",
        }
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let (code, reason, message) = match self {
            Outcome::Accepted(status) => {
                return json_response(StatusCode::OK, &json!({"trainerStatus": status}));
            }
            Outcome::Refused(Refusal::Unauthenticated(m)) => (StatusCode::UNAUTHORIZED, "Unauthorized", m),
            Outcome::Refused(Refusal::Forbidden(m)) => (StatusCode::FORBIDDEN, "Forbidden", m),
            Outcome::Refused(e @ Refusal::Unavailable(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string())
            }
            Outcome::RateLimited(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                format!(
                    "this job reports too often: at most {} a second (bursts of {}); try again in {} s",
                    limit::PER_SECOND,
                    limit::BURST,
                    retry_after(wait)
                ),
            ),
            Outcome::TooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("the body is over {MAX_BODY} bytes: report fewer or shorter metrics"),
            ),
            Outcome::Malformed(m) => (StatusCode::BAD_REQUEST, "BadRequest", m),
            Outcome::Invalid(m) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid", m),
            Outcome::NotFound(m) => (StatusCode::NOT_FOUND, "NotFound", m),
            Outcome::Failed(m) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError", m),
        };
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        });
        let mut response = json_response(code, &body);
        if code == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn json_response(code: StatusCode, body: &serde_json::Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn retry_after(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

async fn report(
    State(server): State<Arc<Server>>,
    Path((namespace, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let job = JobRef { namespace, name };
    let outcome = handle(&server, &job, &headers, body).await;
    server
        .metrics
        .progress_reports
        .get_or_create(&ResultLabels {
            result: outcome.label().into(),
        })
        .inc();
    match &outcome {
        Outcome::Accepted(_) => {
            tracing::debug!(namespace = %job.namespace, name = %job.name, "progress reported")
        }
        Outcome::Refused(Refusal::Unavailable(_)) | Outcome::Failed(_) => {
            tracing::warn!(namespace = %job.namespace, name = %job.name, outcome = ?outcome, "progress report failed")
        }
        _ => {
            tracing::debug!(namespace = %job.namespace, name = %job.name, result = outcome.label(), "progress report refused")
        }
    }
    let wait = match &outcome {
        Outcome::RateLimited(wait) => Some(retry_after(*wait)),
        _ => None,
    };
    let mut response = outcome.into_response();
    if let Some(seconds) = wait {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

async fn handle(server: &Server, job: &JobRef, headers: &HeaderMap, body: Body) -> Outcome {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if let Err(refusal) = server.reviewer.check(authorization, job).await {
        return Outcome::Refused(refusal);
    }
    if let Err(wait) = server.limiter.take(job, Instant::now()) {
        return Outcome::RateLimited(wait);
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Outcome::TooLarge;
    };
    let status = match report::parse(&body, k8s_openapi::jiff::Timestamp::now()) {
        Ok(Some(status)) => status,
        Ok(None) => return Outcome::Accepted(None),
        Err(report::Invalid::Malformed(m)) => return Outcome::Malformed(m),
        Err(report::Invalid::Value(m)) => return Outcome::Invalid(m),
    };
    write(&server.client, job, &status)
        .await
        .map_or_else(|o| o, |()| Outcome::Accepted(Some(status)))
}

/// Applies `status` as `status.trainerStatus` of `job`, under [`FIELD_MANAGER`].
async fn write(client: &Client, job: &JobRef, status: &TrainerStatus) -> Result<(), Outcome> {
    use kube::Resource;
    let patch = json!({
        "apiVersion": TrainJob::api_version(&()),
        "kind": TrainJob::kind(&()),
        "status": {"trainerStatus": status},
    });
    Api::<TrainJob>::namespaced(client.clone(), &job.namespace)
        .patch_status(
            &job.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map(|_| ())
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => Outcome::NotFound(format!(
                "TrainJob {}/{} does not exist (any more)",
                job.namespace, job.name
            )),
            kube::Error::Api(s) if s.code == 422 || s.code == 400 => Outcome::Invalid(s.message),
            other => Outcome::Failed(format!("writing the progress failed: {other}")),
        })
}
