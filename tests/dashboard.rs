//! The dashboard's API against the local control plane, as it runs in a cluster: every request
//! brings the person's bearer token and acts as them. Two tenants, each with `edit` in their own
//! namespace: each sees, creates and deletes their own jobs and is refused the other's, in the
//! API server's words; writes without the page's header or from another origin are refused;
//! every answer carries the security headers; and every answer matches the OpenAPI document the
//! server serves (required fields present, error shapes as documented).

use trainjob_testbed::support;

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode, header};
use kube::Config;
use kube::api::Api;
use serde_json::{Value, json};
use support::jobs::{HOLD, grant_edit, pod_meta, runtime, setup, wait_pods};
use support::{Identity, bed};
use tower::ServiceExt;
use trainjob_operator::api::TrainJob;
use trainjob_operator::dashboard::{self, WRITE_HEADER};

/// The dashboard as deployed: forwarding each request's token to the bed's API server.
async fn dashboard() -> Router {
    let options = kube::config::KubeConfigOptions::default();
    let config = Config::from_custom_kubeconfig(bed().kubeconfig(Identity::Admin), &options)
        .await
        .expect("the bed's cluster");
    dashboard::router(dashboard::Identity::bearer(config))
}

/// One answer: status, headers, JSON body (Null when not JSON) and the raw text.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    json: Value,
    text: String,
}

async fn call(app: &Router, who: Option<Identity>, request: http::request::Builder, body: Body) -> Answer {
    let request = match who {
        Some(who) => request.header(header::AUTHORIZATION, format!("Bearer {}", who.token())),
        None => request,
    };
    let response = app
        .clone()
        .oneshot(request.body(body).expect("request"))
        .await
        .expect("an answer");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 24)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes).to_string();
    Answer {
        status,
        headers,
        json: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

async fn get(app: &Router, who: Option<Identity>, path: &str) -> Answer {
    call(app, who, Request::get(path), Body::empty()).await
}

/// A write as the page sends it.
fn write(method: http::Method, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(WRITE_HEADER, "1")
        .header("sec-fetch-site", "same-origin")
        .header(header::CONTENT_TYPE, "application/json")
}

/// The OpenAPI schema `name`'s required properties are all in `value`.
fn conforms(doc: &Value, name: &str, value: &Value) {
    let schema = &doc["components"]["schemas"][name];
    let required = schema["required"]
        .as_array()
        .unwrap_or_else(|| panic!("schema {name}: {schema}"));
    for field in required {
        let field = field.as_str().expect("field name");
        assert!(value.get(field).is_some(), "{name} lacks {field}: {value}");
    }
}

#[tokio::test]
async fn each_tenant_sees_creates_and_deletes_only_their_own_jobs() {
    let (a, c) = setup("dash-a").await;
    let (b, _) = setup("dash-b").await;
    let (a, b) = (a.name.as_str(), b.name.as_str());
    grant_edit(&c, a, Identity::TenantA).await;
    grant_edit(&c, b, Identity::TenantB).await;
    runtime(&c, a, "mpi-openmpi", "pi", |rt| {
        pod_meta(rt, "launcher")["annotations"][HOLD] = json!("true");
    })
    .await;
    let app = dashboard().await;
    let doc = get(&app, None, "/api/openapi.json").await.json;
    assert_eq!(doc["openapi"], "3.1.0");

    // No identity: a documented refusal that says to sign in.
    let none = get(&app, None, &format!("/api/namespaces/{a}/trainjobs")).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{}", none.text);
    conforms(&doc, "Problem", &none.json);
    assert!(
        none.json["message"]
            .as_str()
            .unwrap_or_default()
            .contains("sign in")
    );

    // A creates a job in their namespace (the binding reaches the authorizer a moment later).
    let job = json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": "mine"},
        "spec": {"runtimeRef": {"kind": "TrainingRuntime", "name": "pi"}},
    });
    let jobs = format!("/api/namespaces/{a}/trainjobs");
    support::eventually("tenant A's create", support::DEADLINE, || async {
        let created = call(
            &app,
            Some(Identity::TenantA),
            write(http::Method::POST, &jobs),
            Body::from(job.to_string()),
        )
        .await;
        match created.status {
            StatusCode::CREATED => Ok(created),
            _ => Err(created.text),
        }
    })
    .await;
    wait_pods(
        &c,
        a,
        "mine",
        &["mine-launcher-0-0", "mine-node-0-0", "mine-node-0-1"],
    )
    .await;

    let listed = get(&app, Some(Identity::TenantA), &jobs).await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    let items = listed.json["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{}", listed.text);
    conforms(&doc, "Listed", &items[0]);
    assert_eq!(items[0]["name"], "mine");
    assert_eq!(items[0]["nodes"]["wanted"], 2);

    let one = get(&app, Some(Identity::TenantA), &format!("{jobs}/mine")).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    conforms(&doc, "JobView", &one.json);
    assert_eq!(one.json["runtime"], "TrainingRuntime/pi");
    assert!(
        one.json["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["reason"] == "PodsCreated")),
        "{}",
        one.text
    );
    // Every answer carries the security headers; the API's are never cached.
    for (name, wanted) in [
        ("content-security-policy", "default-src 'self'"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
    ] {
        let value = one
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(value.starts_with(wanted), "{name}: {value:?}");
    }

    // B sees none of it, in the API server's words; nor does B's own namespace show A's job.
    for path in [jobs.clone(), format!("{jobs}/mine"), format!("{jobs}/mine/logs")] {
        let refused = get(&app, Some(Identity::TenantB), &path).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{path}: {}", refused.text);
        conforms(&doc, "Problem", &refused.json);
        assert!(
            refused.json["message"]
                .as_str()
                .unwrap_or_default()
                .contains("forbidden"),
            "{}",
            refused.text
        );
    }
    let own = get(
        &app,
        Some(Identity::TenantB),
        &format!("/api/namespaces/{b}/trainjobs"),
    )
    .await;
    assert_eq!(own.json["items"], json!([]), "{}", own.text);
    let delete = format!("{jobs}/mine");
    let refused = call(
        &app,
        Some(Identity::TenantB),
        write(http::Method::DELETE, &delete),
        Body::empty(),
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);

    // A's delete goes through; then the job is not found, in a documented shape.
    let deleted = call(
        &app,
        Some(Identity::TenantA),
        write(http::Method::DELETE, &delete),
        Body::empty(),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK, "{}", deleted.text);
    assert_eq!(deleted.json["deleted"], true);
    let gone = get(&app, Some(Identity::TenantA), &format!("{jobs}/mine")).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.text);
    conforms(&doc, "Problem", &gone.json);
}

#[tokio::test]
async fn bad_jobs_are_refused_field_by_field_and_foreign_writes_not_at_all() {
    let (ns, c) = setup("dash-bad").await;
    let ns = ns.name.as_str();
    grant_edit(&c, ns, Identity::TenantA).await;
    let app = dashboard().await;
    let doc = get(&app, None, "/api/openapi.json").await.json;
    let jobs = format!("/api/namespaces/{ns}/trainjobs");
    let job = |nodes: i64| {
        json!({
            "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
            "metadata": {"name": "bad"},
            "spec": {"runtimeRef": {"name": "mpi-openmpi"}, "trainer": {"numNodes": nodes}},
        })
        .to_string()
    };
    // The API server's schema refuses numNodes 0, naming the field.
    let refused = support::eventually("a field-by-field refusal", support::DEADLINE, || async {
        let answer = call(
            &app,
            Some(Identity::TenantA),
            write(http::Method::POST, &jobs),
            Body::from(job(0)),
        )
        .await;
        match answer.status {
            StatusCode::UNPROCESSABLE_ENTITY => Ok(answer),
            _ => Err(answer.text),
        }
    })
    .await;
    conforms(&doc, "Problem", &refused.json);
    let fields = refused.json["fields"].as_array().expect("fields");
    assert!(
        fields.iter().any(|f| f["field"] == "spec.trainer.numNodes"),
        "{}",
        refused.text
    );

    // Not a TrainJob at all.
    let garbage = call(
        &app,
        Some(Identity::TenantA),
        write(http::Method::POST, &jobs),
        Body::from("{"),
    )
    .await;
    assert_eq!(garbage.status, StatusCode::BAD_REQUEST, "{}", garbage.text);
    conforms(&doc, "Problem", &garbage.json);

    // Writes that do not come from the dashboard's own page: nothing is created.
    let plain = Request::post(&jobs).header(header::CONTENT_TYPE, "application/json");
    let bare = call(&app, Some(Identity::TenantA), plain, Body::from(job(2))).await;
    assert_eq!(bare.status, StatusCode::FORBIDDEN, "{}", bare.text);
    let from = |site: &str, origin: &str| {
        Request::post(&jobs)
            .header(WRITE_HEADER, "1")
            .header(header::HOST, "dashboard.example")
            .header("sec-fetch-site", site)
            .header(header::ORIGIN, origin)
    };
    let cross = call(
        &app,
        Some(Identity::TenantA),
        from("cross-site", "https://evil.example"),
        Body::from(job(2)),
    )
    .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN, "{}", cross.text);
    // A browser without Sec-Fetch-Site still names the other origin.
    let other = Request::post(&jobs)
        .header(WRITE_HEADER, "1")
        .header(header::HOST, "dashboard.example")
        .header(header::ORIGIN, "https://evil.example");
    let cross = call(&app, Some(Identity::TenantA), other, Body::from(job(2))).await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN, "{}", cross.text);
    let listed = get(&app, Some(Identity::TenantA), &jobs).await;
    assert_eq!(listed.json["items"], json!([]), "{}", listed.text);
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let app = dashboard().await;
    let doc = get(&app, None, "/api/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    let paths: Vec<&String> = doc.json["paths"].as_object().expect("paths").keys().collect();
    assert_eq!(
        paths,
        [
            "/api/namespaces/{ns}/feed",
            "/api/namespaces/{ns}/trainjobs",
            "/api/namespaces/{ns}/trainjobs/{name}",
            "/api/namespaces/{ns}/trainjobs/{name}/logs",
        ]
    );
    for schema in ["JobView", "Listed", "Problem"] {
        assert!(
            doc.json["components"]["schemas"][schema]["properties"].is_object(),
            "{schema}"
        );
    }
    // Every reference resolves.
    let text = doc.text.clone();
    for reference in text.split("\"$ref\":\"").skip(1) {
        let target = reference.split('"').next().unwrap_or_default();
        let name = target.trim_start_matches("#/components/schemas/");
        assert!(
            doc.json["components"]["schemas"][name].is_object(),
            "dangling {target}"
        );
    }
}

/// `GET path` over plain HTTP/1.1 at `addr`: (status, body).
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("response");
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

#[tokio::test]
async fn kubectl_trainjob_dashboard_serves_as_the_kubeconfigs_user() {
    use std::io::{BufRead, BufReader};
    let (ns, c) = setup("dash-local").await;
    let ns = ns.name.as_str();
    grant_edit(&c, ns, Identity::TenantA).await;
    /// Stopped however the test ends.
    struct Running(std::process::Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-trainjob"))
        .arg("--kubeconfig")
        .arg(bed().kubeconfig_path(Identity::TenantA))
        .args(["dashboard", "--port", "0"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl trainjob dashboard");
    let stderr = child.stderr.take().expect("stderr");
    let _running = Running(child);
    let mut banner = String::new();
    BufReader::new(stderr).read_line(&mut banner).expect("the banner");
    let addr = banner
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .to_string();
    assert!(addr.starts_with("127.0.0.1:"), "{banner}");
    let mine = format!("/api/namespaces/{ns}/trainjobs");
    let listed = support::eventually("the tenant's list", support::DEADLINE, || async {
        match http_get(&addr, &mine).await {
            (200, body) => Ok(body),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&listed).expect("json")["items"],
        json!([])
    );
    let (status, body) = http_get(&addr, "/api/namespaces/kube-system/trainjobs").await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn the_live_feed_sends_each_change_of_the_tenants_jobs_and_nothing_to_others() {
    let (ns, c) = setup("dash-feed").await;
    let ns = ns.name.as_str();
    grant_edit(&c, ns, Identity::TenantA).await;
    runtime(&c, ns, "mpi-openmpi", "held", |rt| {
        pod_meta(rt, "launcher")["annotations"][HOLD] = json!("true");
    })
    .await;
    let app = dashboard().await;
    let path = format!("/api/namespaces/{ns}/feed");

    // Another tenant: an ordinary refusal, no stream.
    let refused = get(&app, Some(Identity::TenantB), &path).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text);

    let response = support::eventually("the tenant's feed", support::DEADLINE, || async {
        let request = Request::get(&path)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", Identity::TenantA.token()),
            )
            .body(Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("an answer");
        match response.status() {
            StatusCode::OK => Ok(response),
            status => Err(status.to_string()),
        }
    })
    .await;
    assert_eq!(
        response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut feed = support::sse::Events::new(response.into_body().into_data_stream());
    let (event, first) = feed.next().await;
    assert_eq!((event.as_str(), &first), ("snapshot", &json!({"items": []})));

    support::jobs::create_job(&c, ns, "live", "held", json!({})).await;
    feed.until("the new job", |e, d| e == "job" && d["name"] == "live")
        .await;
    // Its workers come up on the kwok nodes: the view follows, pod by pod.
    let ready = feed
        .until("both workers ready", |e, d| {
            e == "job" && d["nodes"]["ready"] == 2
        })
        .await;
    assert_eq!(ready["nodes"]["wanted"], 2, "{ready}");
    Api::<TrainJob>::namespaced(c.clone(), ns)
        .delete("live", &Default::default())
        .await
        .expect("delete");
    feed.until("the job gone", |e, d| e == "gone" && d["name"] == "live")
        .await;
}
