//! The dashboard's server: the page (`assets`, built into the binary), its JSON API (`api`) and
//! live feed (`feed`), the identity every request acts as (`identity`, `session` for signing in),
//! the headers and write checks every response and write goes through (`security`), and the
//! OpenAPI document that describes the API (`openapi`). It runs as
//! `trainjob-dashboard` in the cluster (each request with the user's bearer token) and
//! as `kubectl trainjob dashboard` on a workstation (the kubeconfig's user, on loopback).

mod api;
mod assets;
mod feed;
mod identity;
mod openapi;
mod security;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;

pub use api::{FieldProblem, Listed, Problem};
pub use feed::{SENDS_AT_ONCE, SENDS_PER_SECOND};
pub use identity::{Identity, IdentityError};
pub use security::WRITE_HEADER;

/// Why the dashboard could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving the dashboard: {0}")]
    Serve(#[source] std::io::Error),
}

/// The dashboard's routes, acting as `identity`.
pub fn router(identity: Identity) -> Router {
    let jobs = "/api/namespaces/{ns}/trainjobs";
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        .route(
            "/api/session",
            get(session::get).post(session::sign_in).delete(session::sign_out),
        )
        .route("/api/namespaces/{ns}/runtimes", get(api::runtimes))
        .route("/api/openapi.json", get(openapi::document))
        .route(jobs, get(api::list).post(api::create))
        .route(&format!("{jobs}/{{name}}"), get(api::get).delete(api::delete))
        .route(&format!("{jobs}/{{name}}/logs"), get(api::logs))
        .route(&format!("{jobs}/{{name}}/usage"), get(api::usage))
        .route("/api/namespaces/{ns}/feed", get(feed::feed))
        .layer(DefaultBodyLimit::max(api::MAX_BODY))
        .layer(axum::middleware::from_fn(security::guard))
        .with_state(Arc::new(identity))
}

/// Serves the dashboard on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    identity: Identity,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    axum::serve(listener, router(identity))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Serve)
}

/// A listener on `addr`.
pub async fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}
