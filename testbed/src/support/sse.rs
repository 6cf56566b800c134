//! Reading Server-Sent Events (the dashboard's live feed and followed logs) as they come.

use futures::{Stream, StreamExt};
use serde_json::Value;

use super::DEADLINE;

/// The events of a Server-Sent Events body.
pub struct Events<S> {
    body: S,
    buffer: String,
}

impl<S, B, E> Events<S>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Debug,
{
    pub fn new(body: S) -> Events<S> {
        Events {
            body,
            buffer: String::new(),
        }
    }

    /// The next event as (name, JSON data), within `within`; None when the stream ended.
    pub async fn next_within(&mut self, within: std::time::Duration) -> Option<(String, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .filter_map(|l| l.strip_prefix(name))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                let event = field("event: ");
                // Keep-alive comments carry no event.
                if !event.is_empty() {
                    let data = serde_json::from_str(&field("data: ")).expect("JSON data");
                    return Some((event, data));
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .unwrap_or_else(|_| panic!("no event within {within:?}; so far: {:?}", self.buffer))?
                .expect("a chunk");
            self.buffer.push_str(&String::from_utf8_lossy(chunk.as_ref()));
        }
    }

    /// The next event, within the tests' deadline.
    pub async fn next(&mut self) -> (String, Value) {
        self.next_within(DEADLINE).await.expect("the stream ended")
    }

    /// Events until one satisfies `wanted`.
    pub async fn until(&mut self, what: &str, wanted: impl Fn(&str, &Value) -> bool) -> Value {
        let mut seen = Vec::new();
        loop {
            let (event, data) = self.next().await;
            if wanted(&event, &data) {
                return data;
            }
            seen.push(format!("{event} {data}"));
            assert!(seen.len() < 200, "no {what} in {seen:#?}");
        }
    }
}

/// `GET url` over plain HTTP with `token` as its bearer (the dashboard as its own process): the
/// status, and the body's chunks as they come.
pub async fn get(
    url: &str,
    token: &str,
) -> Result<
    (
        http::StatusCode,
        impl Stream<Item = Result<bytes::Bytes, String>> + Unpin + use<>,
    ),
    String,
> {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let client = Client::builder(TokioExecutor::new()).build_http::<http_body_util::Empty<bytes::Bytes>>();
    let request = http::Request::get(url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(http_body_util::Empty::new())
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body =
        http_body_util::BodyDataStream::new(response.into_body()).map(|c| c.map_err(|e| e.to_string()));
    Ok((status, body))
}
