//! Signing in to a dashboard that runs in the cluster, and who the page is talking as.
//!
//! A person signs in with their Kubernetes token (a service account's, or their identity
//! provider's ID token): the server asks the API server who that token is (a SelfSubjectReview,
//! which every authenticated user may make), and only then keeps it in an `HttpOnly`,
//! `SameSite=Strict` cookie. So the token never sits where the page's script can read it, never
//! travels in a URL, and the browser sends it back only to this dashboard, from its own pages.
//! Every later request is checked by the API server itself, as that person.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::Client;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};

use super::api::Problem;
use super::identity::{Identity, IdentityError};

/// The cookie that holds a signed-in person's token.
pub const COOKIE: &str = "trainjob-token";

/// Who the page is talking as.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// `kubeconfig`: a server on a workstation acting as the kubeconfig's user (no sign-in);
    /// `token`: each person signs in with their own token.
    pub mode: String,
    /// Whether requests now act as someone.
    pub signed_in: bool,
    /// The user the API server knows, once signed in.
    pub user: Option<String>,
    /// The namespace to show first: the kubeconfig's, a service account's own, else `default`.
    pub namespace: String,
}

/// What the sign-in form sends.
#[derive(Deserialize)]
pub struct SignIn {
    token: String,
}

/// `GET /api/session`: who requests act as now (never a refusal: a page asks this first).
pub async fn get(State(identity): State<Arc<Identity>>, headers: HeaderMap) -> Json<Session> {
    let mode = mode(&identity);
    match identity.client(&headers) {
        Ok(client) => Json(
            review(&client, mode, &identity)
                .await
                .unwrap_or_else(|_| signed_out(mode)),
        ),
        Err(_) => Json(signed_out(mode)),
    }
}

/// `POST /api/session`: signs in with `{"token"}` if the API server knows the token.
pub async fn sign_in(
    State(identity): State<Arc<Identity>>,
    headers: HeaderMap,
    Json(body): Json<SignIn>,
) -> Result<Response, Problem> {
    let token = body.token.trim();
    if matches!(*identity, Identity::Kubeconfig(_)) {
        return Err(Problem::new(
            400,
            "BadRequest",
            "this dashboard acts as your kubeconfig's user: there is nothing to sign in to",
        ));
    }
    // A token is base64url text with dots; anything else could not be a cookie's value.
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
    {
        return Err(Problem::new(
            400,
            "BadRequest",
            "paste the token itself: one line of letters, digits and -._~+/= (from `kubectl create token` or your identity provider)",
        ));
    }
    let client = identity.client_for_token(token)?;
    let session = review(&client, mode(&identity), &identity).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 401 => Problem::new(
            401,
            "Unauthorized",
            "the cluster does not accept this token: it is wrong or expired; get a new one (`kubectl create token`, or sign in to your identity provider again)",
        ),
        other => Problem::new(502, "ClusterUnreachable", format!("asking the cluster who this token is: {other}")),
    })?;
    // Behind TLS (the ingress says so) the cookie must never travel in the clear.
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    );
    let mut response = Json(session).into_response();
    let value = HeaderValue::from_str(&cookie).map_err(|_| IdentityError::NoToken)?;
    response.headers_mut().insert(header::SET_COOKIE, value);
    Ok(response)
}

/// `DELETE /api/session`: forgets the token.
pub async fn sign_out() -> Response {
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cookie)]).into_response()
}

fn mode(identity: &Identity) -> &'static str {
    match identity {
        Identity::Kubeconfig(_) => "kubeconfig",
        Identity::Bearer { .. } => "token",
    }
}

fn signed_out(mode: &str) -> Session {
    Session {
        mode: mode.into(),
        signed_in: false,
        user: None,
        namespace: "default".into(),
    }
}

/// Who `client` is, as the API server sees it.
async fn review(client: &Client, mode: &str, identity: &Identity) -> Result<Session, kube::Error> {
    let reviewed = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let user = reviewed.status.and_then(|s| s.user_info).and_then(|u| u.username);
    let own_namespace = user
        .as_deref()
        .and_then(|u| u.strip_prefix("system:serviceaccount:"))
        .and_then(|u| u.split_once(':'))
        .map(|(ns, _)| ns.to_string());
    let namespace = match identity {
        Identity::Kubeconfig(client) => client.default_namespace().to_string(),
        Identity::Bearer { .. } => own_namespace.unwrap_or_else(|| "default".into()),
    };
    Ok(Session {
        mode: mode.into(),
        signed_in: true,
        user,
        namespace,
    })
}
