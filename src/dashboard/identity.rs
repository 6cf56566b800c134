//! Who a dashboard request is, as a Kubernetes client that acts as that person.
//!
//! Locally (`kubectl trainjob dashboard`) it is the kubeconfig's user. In the cluster each request
//! carries the person's bearer token (`Authorization: Bearer`, from the sign-in page or an
//! authenticating proxy), and the server forwards it to the API server in place of its own
//! credentials: the dashboard's service account needs no rights on TrainJobs, pods, logs or
//! Secrets, and RBAC and tenancy stay the API server's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use kube::config::AuthInfo;
use kube::{Client, Config};
use secrecy::SecretString;

/// How long a token's client is kept for reuse (its TLS connections with it).
const KEEP: Duration = Duration::from_secs(5 * 60);
/// At most this many tokens' clients are kept; beyond, the oldest go.
const MAX_KEPT: usize = 256;

/// Where identities come from.
pub enum Identity {
    /// Every request is the kubeconfig's user (a local server on loopback).
    Kubeconfig(Client),
    /// Every request brings its own bearer token; `base` is the cluster to forward it to
    /// (its own credentials are dropped).
    Bearer {
        base: Box<Config>,
        kept: Mutex<HashMap<[u8; 32], (Client, Instant)>>,
    },
}

/// Why a request has no identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "sign in: this dashboard acts as you, with your Kubernetes token (the sign-in page, or Authorization: Bearer)"
    )]
    NoToken,
    #[error("the token cannot be used: {0}")]
    Unusable(String),
}

impl Identity {
    /// Forwarding bearer tokens to the cluster of `config`.
    pub fn bearer(config: Config) -> Identity {
        Identity::Bearer {
            base: Box::new(config),
            kept: Mutex::default(),
        }
    }

    /// The client that acts as the person who sent `headers`: their `Authorization: Bearer`
    /// token, else the token they signed in with.
    pub fn client(&self, headers: &HeaderMap) -> Result<Client, IdentityError> {
        match self {
            Identity::Kubeconfig(client) => Ok(client.clone()),
            Identity::Bearer { .. } => {
                let token = bearer(headers)
                    .or_else(|| signed_in(headers))
                    .ok_or(IdentityError::NoToken)?;
                self.client_for_token(token)
            }
        }
    }

    /// The client that acts as the owner of `token` (the kubeconfig's user, locally).
    pub fn client_for_token(&self, token: &str) -> Result<Client, IdentityError> {
        match self {
            Identity::Kubeconfig(client) => Ok(client.clone()),
            Identity::Bearer { base, kept } => {
                let key = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
                let key: [u8; 32] = key.as_ref().try_into().map_err(|_| IdentityError::NoToken)?;
                let now = Instant::now();
                let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                kept.retain(|_, (_, at)| now.duration_since(*at) < KEEP);
                if let Some((client, _)) = kept.get(&key) {
                    return Ok(client.clone());
                }
                let mut config = (**base).clone();
                config.auth_info = AuthInfo {
                    token: Some(SecretString::from(token.to_string())),
                    ..AuthInfo::default()
                };
                let client = Client::try_from(config).map_err(|e| IdentityError::Unusable(e.to_string()))?;
                if kept.len() >= MAX_KEPT
                    && let Some(oldest) = kept.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k)
                {
                    kept.remove(&oldest);
                }
                kept.insert(key, (client.clone(), now));
                Ok(client)
            }
        }
    }
}

/// The token of the sign-in cookie.
fn signed_in(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == super::session::COOKIE && !value.is_empty())
        .map(|(_, value)| value)
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}
