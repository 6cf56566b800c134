//! Who may report a job's progress: a pod of that job, proving it with the projected service
//! account token the operator mounted for it. The token's audience names the job
//! ([`super::audience`]), so a token of job A's pods is worth nothing for job B. The API server
//! decides whether a token is valid (a TokenReview: signature, expiry, and that the pod it is
//! bound to still exists); the operator then checks that the pod named in the token belongs to
//! the job, so that nobody who may only mint tokens in a namespace can write a job's progress.
//! Accepted tokens are remembered for a short while, so a job reporting every few seconds costs
//! the API server a review a minute, not one per report.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use crate::api::TrainJob;

/// The TokenReview's `user.extra` key naming the pod a token is bound to.
const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// Likewise, the pod's uid.
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// How long an accepted token is taken without asking again (never past its expiry).
const REMEMBER: Duration = Duration::from_secs(60);
/// Most tokens remembered; beyond that the expired ones go, then all.
const MAX_REMEMBERED: usize = 4096;

/// Why a report was not let in.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No credentials, or credentials the API server does not accept (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid token that may not write this job's progress (403).
    #[error("{0}")]
    Forbidden(String),
    /// The API server could not be asked (500).
    #[error("checking the token failed: {0}")]
    Unavailable(#[source] kube::Error),
}

/// The job a report is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JobRef {
    pub namespace: String,
    pub name: String,
}

/// Checks tokens with the API server and remembers the ones it accepted.
pub struct Reviewer {
    client: Client,
    accepted: Mutex<HashMap<String, (JobRef, Instant)>>,
}

impl Reviewer {
    /// A reviewer asking through `client` (the operator's identity: it may create TokenReviews
    /// and read pods).
    pub fn new(client: Client) -> Reviewer {
        Reviewer {
            client,
            accepted: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the `Authorization` header `header` lets its bearer report `job`'s progress.
    pub async fn check(&self, header: Option<&str>, job: &JobRef) -> Result<(), Refusal> {
        let token = bearer(header)?;
        if self.remembered(token, job) {
            return Ok(());
        }
        let claims = Claims::peek(token)?;
        let audience = super::audience(&job.namespace, &job.name);
        if !claims.audiences.contains(&audience) {
            return Err(Refusal::Forbidden(format!(
                "this token is for {}, not for TrainJob {}/{}: a job's pods may report only that job's progress",
                claims.audiences.join(", "),
                job.namespace,
                job.name
            )));
        }
        let pod = self.review(token, &audience, job).await?;
        self.owned_pod(&pod, job).await?;
        let until = Instant::now() + REMEMBER.min(claims.expires_in());
        self.remember(token, job, until);
        Ok(())
    }

    fn remembered(&self, token: &str, job: &JobRef) -> bool {
        let accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        accepted
            .get(token)
            .is_some_and(|(j, until)| j == job && Instant::now() < *until)
    }

    fn remember(&self, token: &str, job: &JobRef, until: Instant) {
        let mut accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        if accepted.len() >= MAX_REMEMBERED {
            let now = Instant::now();
            accepted.retain(|_, (_, until)| now < *until);
            if accepted.len() >= MAX_REMEMBERED {
                accepted.clear();
            }
        }
        accepted.insert(token.to_string(), (job.clone(), until));
    }

    /// Asks the API server about `token` for `audience`; the pod it is bound to.
    async fn review(&self, token: &str, audience: &str, job: &JobRef) -> Result<BoundPod, Refusal> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![audience.to_string()]),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(Refusal::Unavailable)?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Refusal::Unauthenticated(format!(
                "the API server did not accept this token for TrainJob {}/{} (expired, revoked, or its pod is gone): \
                 read it again from the file $KUBEFLOW_TRAINER_SERVER_TOKEN names, which the kubelet renews",
                job.namespace, job.name
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let in_namespace = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(ns, _)| ns == job.namespace);
        if !in_namespace {
            return Err(Refusal::Forbidden(format!(
                "{username} is not a service account of namespace {}: only the job's pods may report its progress",
                job.namespace
            )));
        }
        let extra = user.extra.unwrap_or_default();
        let first = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        match (first(POD_NAME), first(POD_UID)) {
            (Some(name), Some(uid)) => Ok(BoundPod { name, uid }),
            _ => Err(Refusal::Forbidden(
                "this token is not bound to a pod: only the job's pods may report its progress, with the token \
                 the operator mounts at $KUBEFLOW_TRAINER_SERVER_TOKEN"
                    .into(),
            )),
        }
    }

    /// Whether the pod a token is bound to is this very pod of the job.
    async fn owned_pod(&self, bound: &BoundPod, job: &JobRef) -> Result<(), Refusal> {
        let pod = Api::<Pod>::namespaced(self.client.clone(), &job.namespace)
            .get_opt(&bound.name)
            .await
            .map_err(Refusal::Unavailable)?;
        let kind = <TrainJob as kube::Resource>::kind(&());
        let ours = pod.as_ref().is_some_and(|pod| {
            pod.uid().as_deref() == Some(bound.uid.as_str())
                && pod
                    .owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && o.kind == kind && o.name == job.name)
        });
        if ours {
            Ok(())
        } else {
            Err(Refusal::Forbidden(format!(
                "pod {} is not a pod of TrainJob {}/{}: only the job's pods may report its progress",
                bound.name, job.namespace, job.name
            )))
        }
    }
}

/// The pod a token is bound to.
struct BoundPod {
    name: String,
    uid: String,
}

/// The token in an `Authorization: Bearer <token>` header.
fn bearer(header: Option<&str>) -> Result<&str, Refusal> {
    let missing = || {
        Refusal::Unauthenticated(
            "no bearer token: send the token from the file $KUBEFLOW_TRAINER_SERVER_TOKEN names as \
             'Authorization: Bearer <token>'"
                .into(),
        )
    };
    let header = header.ok_or_else(missing)?;
    let mut parts = header.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(scheme), Some(token), None) if scheme.eq_ignore_ascii_case("bearer") => Ok(token),
        _ => Err(missing()),
    }
}

/// What a token says about itself, read without checking its signature: only to refuse a token
/// meant for another audience with a clear answer (and without asking the API server), and to
/// remember an accepted one no longer than it lives. The API server decides on validity.
#[derive(Debug, PartialEq)]
struct Claims {
    audiences: Vec<String>,
    expires: Option<u64>,
}

impl Claims {
    fn peek(token: &str) -> Result<Claims, Refusal> {
        let not_a_token = || {
            Refusal::Unauthenticated(
                "the bearer token is not a Kubernetes service account token (a JWT)".into(),
            )
        };
        let mut parts = token.split('.');
        let payload = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(_), Some(payload), Some(_), None) => payload,
            _ => return Err(not_a_token()),
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|_| not_a_token())?;
        let claims: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| not_a_token())?;
        let audiences = match &claims["aud"] {
            serde_json::Value::String(a) => vec![a.clone()],
            serde_json::Value::Array(list) => {
                list.iter().filter_map(|a| a.as_str().map(String::from)).collect()
            }
            _ => Vec::new(),
        };
        Ok(Claims {
            audiences,
            expires: claims["exp"].as_u64(),
        })
    }

    /// How long until the token expires (zero when it did, or says nothing).
    fn expires_in(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Duration::from_secs(self.expires.unwrap_or(0).saturating_sub(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(claims: serde_json::Value) -> String {
        let enc = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}",
            enc(br#"{"alg":"RS256"}"#),
            enc(claims.to_string().as_bytes()),
            enc(b"signature")
        )
    }

    #[test]
    fn the_bearer_scheme_is_required() {
        assert_eq!(bearer(Some("Bearer abc")).expect("token"), "abc");
        assert_eq!(bearer(Some("bearer  abc")).expect("token"), "abc");
        for bad in [
            None,
            Some(""),
            Some("Basic abc"),
            Some("Bearer"),
            Some("Bearer a b"),
        ] {
            let err = bearer(bad).expect_err("refused");
            assert!(
                matches!(&err, Refusal::Unauthenticated(m) if m.starts_with("no bearer token")),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn claims_are_read_for_the_audience_and_expiry_only() {
        let claims = Claims::peek(&token(serde_json::json!({
            "aud": ["trainer.kubeflow.org/v1alpha1/namespaces/a/trainjobs/b/status"],
            "exp": 4_000_000_000_u64,
        })))
        .expect("claims");
        assert_eq!(
            claims.audiences,
            ["trainer.kubeflow.org/v1alpha1/namespaces/a/trainjobs/b/status"]
        );
        assert!(claims.expires_in() > Duration::from_secs(3600));
        let single = Claims::peek(&token(serde_json::json!({"aud": "x", "exp": 1}))).expect("claims");
        assert_eq!(single.audiences, ["x"]);
        assert_eq!(single.expires_in(), Duration::ZERO);
        for bad in ["abc", "a.b", "a.!!!.c", "a.b.c.d", &format!("a.{}.c", "e30x")] {
            assert!(
                matches!(Claims::peek(bad), Err(Refusal::Unauthenticated(_))),
                "{bad}"
            );
        }
    }
}
