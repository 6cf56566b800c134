//! The real node's S3 server: versitygw (pinned in `hack/s3`, built by `hack/node.sh build`), an
//! S3 gateway over a directory (its posix backend), runs as a host process next to the node's
//! daemons, so that pods download their data from it and upload their results to it as they
//! would with a cloud bucket.
//!
//! It listens on the host's address on the node bridge ([`HOST_ADDRESS`]), which the node's pods
//! and the host reach alike, with root credentials drawn for each bed and given to it in its
//! environment (never on its command line, which `ps` shows). Its buckets are directories under
//! the node's directory, removed with the bed; it dies with the bed, and `hack/node.sh cleanup`
//! also stops one that a crashed bed left behind. Only a bed with a real node has one.
//!
//! [`S3`] is what tests use: the endpoint and credentials to put into a pod's Secret, and a small
//! client (path-style requests signed with SigV4 by `rusty-s3`, sent with hyper) to create
//! buckets, put objects before a pod downloads them and read what a pod uploaded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

pub use super::node::HOST_ADDRESS;
use super::process::{Component, Process};
use super::{BedError, io};

/// The region the server answers for (versitygw's default), which requests are signed for.
pub const REGION: &str = "us-east-1";

/// How long a signed request stays valid: each is sent at once.
const SIGNED_FOR: Duration = Duration::from_secs(300);

/// The bed's S3 server: where it listens and its root credentials, with a client for tests.
///
/// `Debug` leaves the secret key out, so that a failing assertion never prints it.
#[derive(Clone)]
pub struct S3 {
    /// `http://10.244.0.1:PORT`: the same URL from the host and from the real node's pods.
    pub endpoint: String,
    /// The root user's access key id (random per bed).
    pub access_key: String,
    /// The root user's secret access key (random per bed). Keep it out of logs and output.
    pub secret_key: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3")
            .field("endpoint", &self.endpoint)
            .field("access_key", &"<redacted>")
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// A started server, not yet known to be serving.
pub(crate) struct Started {
    /// The process, which the real node stops with its other daemons.
    pub(crate) process: Process,
    pub(crate) s3: S3,
    log: PathBuf,
    spawned: std::time::Instant,
}

/// Random characters from `alphabet`, from the operating system's generator.
fn random(alphabet: &[u8], len: usize) -> Result<String, BedError> {
    use ring::rand::SecureRandom;
    let mut bytes = vec![0u8; len];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| BedError::Command("drawing the S3 credentials: no randomness".into()))?;
    // 256 is a multiple of both alphabets' lengths (32, 64): no bias.
    Ok(bytes
        .iter()
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect())
}

/// Starts versitygw from `binary` with its buckets under the node's directory `dir` (where
/// `hack/node.sh cleanup` looks for it), on a free port of the bridge address. [`wait_ready`]
/// then waits until it answers.
pub(crate) fn start(binary: &Path, dir: &Path) -> Result<Started, BedError> {
    // Shaped as AWS's: 20 upper-case letters and digits; 40 characters of base64url's alphabet
    // (not base64's `+` and `/`, which some tools mangle in URLs and shells).
    let access_key = random(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 20)?;
    let secret_key = random(
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
        40,
    )?;
    let port = super::free_port()?;
    let data = dir.join("s3");
    std::fs::create_dir_all(&data).map_err(|source| io(format!("creating {}", data.display()), source))?;
    let iam = dir.join("s3-iam");
    std::fs::create_dir_all(&iam).map_err(|source| io(format!("creating {}", iam.display()), source))?;
    let log = dir.join("versitygw.log");
    let listen = format!("{HOST_ADDRESS}:{port}");
    let (key, secret) = (access_key.clone(), secret_key.clone());
    let process = Process::spawn_with(
        Component::S3,
        binary,
        &[
            "--port",
            &listen,
            // Readiness, without credentials.
            "--health",
            "/health",
            // An IAM store (empty: root only), so that an unknown access key is refused as S3
            // does (InvalidAccessKeyId, 403); without one, versitygw answers XAdminUserNotFound.
            "--iam-dir",
            &iam.to_string_lossy(),
            // `hack/node.sh cleanup` finds the process by `posix <dir>/s3`.
            "posix",
            &data.to_string_lossy(),
        ],
        &log,
        |command| {
            command
                .env("ROOT_ACCESS_KEY_ID", key)
                .env("ROOT_SECRET_ACCESS_KEY", secret);
            Ok(())
        },
    )?;
    // No idle connections kept: each test has its own tokio runtime, and a pooled connection's
    // task dies with the runtime that made it.
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    Ok(Started {
        process,
        s3: S3 {
            endpoint: format!("http://{listen}"),
            access_key,
            secret_key,
            client,
        },
        log,
        spawned: std::time::Instant::now(),
    })
}

/// Waits until the server answers its health check; fails early with its log when it exits.
pub(crate) async fn wait_ready(started: &Started, timeout: Duration) -> Result<(), BedError> {
    let url = format!("{}/health", started.s3.endpoint);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = started.process.exited() {
            return Err(BedError::Exited {
                component: Component::S3,
                status,
                tail: started.process.tail(30),
            });
        }
        let last = match started.s3.send(http::Method::GET, &url, Bytes::new()).await {
            Ok((status, _)) if status.is_success() => {
                tracing::info!(
                    ready_ms = started.spawned.elapsed().as_millis() as u64,
                    endpoint = %started.s3.endpoint,
                    "S3 server (versitygw) ready"
                );
                return Ok(());
            }
            Ok((status, _)) => format!("HTTP {status}"),
            Err(e) => e,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(BedError::Timeout {
                what: format!(
                    "the S3 server at {} to answer (last: {last})",
                    started.s3.endpoint
                ),
                seconds: timeout.as_secs(),
                logs: format!(
                    "--- versitygw ({}) ---\n{}",
                    started.log.display(),
                    started.process.tail(30)
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl S3 {
    fn bucket(&self, name: &str) -> Result<Bucket, BedError> {
        let endpoint = self
            .endpoint
            .parse()
            .map_err(|e| BedError::Command(format!("the S3 endpoint {}: {e}", self.endpoint)))?;
        Bucket::new(endpoint, UrlStyle::Path, name.to_string(), REGION)
            .map_err(|e| BedError::Command(format!("S3 bucket {name:?}: {e}")))
    }

    fn credentials(&self) -> Credentials {
        Credentials::new(&self.access_key, &self.secret_key)
    }

    /// Sends one request; the status and the body. Errors never name the URL, whose query holds
    /// the access key and signature.
    async fn send(
        &self,
        method: http::Method,
        url: &str,
        body: Bytes,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let request = http::Request::builder()
            .method(method)
            .uri(url)
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    /// Sends a signed request for `what`; the body of a 2xx answer, `None` for a 404, an error
    /// with the server's answer otherwise.
    async fn call(
        &self,
        what: &str,
        method: http::Method,
        url: &str,
        body: Bytes,
    ) -> Result<Option<Bytes>, BedError> {
        let (status, body) = self
            .send(method, url, body)
            .await
            .map_err(|e| BedError::Command(format!("S3 {what} at {}: {e}", self.endpoint)))?;
        if status.is_success() {
            Ok(Some(body))
        } else if status == http::StatusCode::NOT_FOUND {
            Ok(None)
        } else {
            Err(BedError::Command(format!(
                "S3 {what} at {}: HTTP {status}: {}",
                self.endpoint,
                String::from_utf8_lossy(&body)
            )))
        }
    }

    /// Creates bucket `name`.
    pub async fn create_bucket(&self, name: &str) -> Result<(), BedError> {
        let bucket = self.bucket(name)?;
        let credentials = self.credentials();
        let url = bucket.create_bucket(&credentials).sign(SIGNED_FOR);
        let what = format!("create bucket {name:?}");
        match self
            .call(&what, http::Method::PUT, url.as_str(), Bytes::new())
            .await?
        {
            Some(_) => Ok(()),
            None => Err(BedError::Command(format!("S3 {what}: not found"))),
        }
    }

    /// Puts `body` as object `key` of `bucket`.
    pub async fn put_object(&self, bucket: &str, key: &str, body: impl Into<Bytes>) -> Result<(), BedError> {
        let b = self.bucket(bucket)?;
        let credentials = self.credentials();
        let url = b.put_object(Some(&credentials), key).sign(SIGNED_FOR);
        let what = format!("put s3://{bucket}/{key}");
        match self
            .call(&what, http::Method::PUT, url.as_str(), body.into())
            .await?
        {
            Some(_) => Ok(()),
            None => Err(BedError::Command(format!("S3 {what}: no such bucket"))),
        }
    }

    /// Object `key` of `bucket`, or `None` when there is none (or no such bucket).
    pub async fn get_object(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, BedError> {
        let b = self.bucket(bucket)?;
        let credentials = self.credentials();
        let url = b.get_object(Some(&credentials), key).sign(SIGNED_FOR);
        let what = format!("get s3://{bucket}/{key}");
        Ok(self
            .call(&what, http::Method::GET, url.as_str(), Bytes::new())
            .await?
            .map(|b| b.to_vec()))
    }

    /// Every key of `bucket` that starts with `prefix`, in S3's order (every page of the
    /// listing).
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, BedError> {
        let b = self.bucket(bucket)?;
        let credentials = self.credentials();
        let what = format!("list s3://{bucket}/{prefix}");
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = b.list_objects_v2(Some(&credentials));
            action.with_prefix(prefix);
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(SIGNED_FOR);
            let Some(body) = self
                .call(&what, http::Method::GET, url.as_str(), Bytes::new())
                .await?
            else {
                return Err(BedError::Command(format!("S3 {what}: no such bucket")));
            };
            let text = String::from_utf8_lossy(&body);
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&text)
                .map_err(|e| BedError::Command(format!("S3 {what}: parsing the answer: {e}")))?;
            keys.extend(page.contents.into_iter().map(|c| c.key));
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => return Ok(keys),
            }
        }
    }
}
