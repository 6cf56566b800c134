//! HTTP endpoints for Prometheus and the kubelet: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// What the endpoints report on.
#[derive(Clone)]
pub struct Health {
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
    /// Set once the operator reached the API server and found its CRDs.
    pub ready: Arc<AtomicBool>,
    /// Set once the admission webhook serves its certificate; `None` when it is off.
    pub webhook: Option<Arc<AtomicBool>>,
    /// Set while this replica holds the leader Lease; `None` without leader election.
    pub leading: Option<Arc<AtomicBool>>,
}

/// The router, separate from serving so tests can call it directly.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

/// Serves the router on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, router(health))
        .with_graceful_shutdown(shutdown)
        .await
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the classic text format.
async fn metrics(State(h): State<Health>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if accept.contains("application/openmetrics-text") {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            h.metrics.encode(),
        )
    } else {
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            h.metrics.encode_prometheus(),
        )
    }
}

/// Ready once the webhook (when on) serves and, on the replica that reconciles, its watch caches
/// have listed: with `failurePolicy: Fail`, traffic must not reach a replica that cannot answer
/// admission yet. A standby (another replica leads) is ready as soon as its webhook serves, since
/// admission is all it does.
async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    let standby = h.leading.as_ref().is_some_and(|l| !l.load(Ordering::Relaxed));
    if h.webhook.as_ref().is_some_and(|w| !w.load(Ordering::Relaxed)) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the admission webhook has no certificate yet",
        )
    } else if standby {
        (StatusCode::OK, "ok: standby (another replica leads)")
    } else if !h.ready.load(Ordering::Relaxed) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the watch caches have not listed yet",
        )
    } else if h.leading.is_some() {
        (StatusCode::OK, "ok: leading")
    } else {
        (StatusCode::OK, "ok")
    }
}
