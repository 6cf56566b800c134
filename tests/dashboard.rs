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
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use support::browser::{Browser, Driver, sign_in};
use support::jobs::{EXIT, HOLD, grant_edit, pod_meta, runtime, setup, wait_condition, wait_pods};
use support::{DEADLINE, Identity, bed, eventually};
use tower::ServiceExt;
use trainjob_operator::api::TrainJob;
use trainjob_operator::dashboard::{self, WRITE_HEADER};

/// The dashboard as deployed: forwarding each request's token to the bed's API server.
async fn dashboard() -> Router {
    dashboard::router(deployed().await)
}

async fn deployed() -> dashboard::Identity {
    let options = kube::config::KubeConfigOptions::default();
    let config = Config::from_custom_kubeconfig(bed().kubeconfig(Identity::Admin), &options)
        .await
        .expect("the bed's cluster");
    dashboard::Identity::bearer(config)
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
    conforms(&doc, "Detailed", &one.json);
    assert_eq!(one.json["runtime"], "TrainingRuntime/pi");

    // Who the page talks as, what it may run on, and usage where no metrics API is served.
    let session = get(&app, Some(Identity::TenantA), "/api/session").await;
    conforms(&doc, "Session", &session.json);
    assert_eq!(session.json["user"], "tenant-a", "{}", session.text);
    assert_eq!(session.json["signedIn"], true);
    let nobody = get(&app, None, "/api/session").await;
    assert_eq!(nobody.json["signedIn"], false, "{}", nobody.text);
    let runtimes = get(
        &app,
        Some(Identity::TenantA),
        &format!("/api/namespaces/{a}/runtimes"),
    )
    .await;
    let runtimes = runtimes.json["items"].as_array().cloned().unwrap_or_default();
    for rt in &runtimes {
        conforms(&doc, "RuntimeRow", rt);
    }
    let names: Vec<&str> = runtimes.iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(
        names.contains(&"pi") && names.contains(&"mpi-openmpi"),
        "{names:?}"
    );
    let usage = get(&app, Some(Identity::TenantA), &format!("{jobs}/mine/usage")).await;
    assert_eq!(
        usage.json,
        json!({"available": false, "pods": []}),
        "{}",
        usage.text
    );
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
            "/api/namespaces/{ns}/runtimes",
            "/api/namespaces/{ns}/trainjobs",
            "/api/namespaces/{ns}/trainjobs/{name}",
            "/api/namespaces/{ns}/trainjobs/{name}/logs",
            "/api/namespaces/{ns}/trainjobs/{name}/usage",
            "/api/session",
        ]
    );
    for schema in [
        "Detailed",
        "JobView",
        "Listed",
        "Problem",
        "RuntimeRow",
        "Session",
        "Usage",
    ] {
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
    // The page too, with nothing to sign in to: the kubeconfig's user and namespace.
    let (status, page) = http_get(&addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains(r#"<script type="module" src="/app.js">"#), "{page}");
    for asset in ["/app.js", "/app.css"] {
        let (status, body) = http_get(&addr, asset).await;
        assert!(status == 200 && body.len() > 1000, "{asset}: {status}");
    }
    let (_, session) = http_get(&addr, "/api/session").await;
    let session: Value = serde_json::from_str(&session).expect("json");
    assert_eq!(
        (&session["mode"], &session["user"], &session["signedIn"]),
        (&json!("kubeconfig"), &json!("tenant-a"), &json!(true)),
        "{session}"
    );
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

    let response = open_feed(&app, &path).await;
    // A job page's feed: that job only.
    let one = open_feed(&app, &format!("{path}?job=live")).await;
    let mut one = support::sse::Events::new(one.into_body().into_data_stream());
    assert_eq!(one.next().await, ("snapshot".to_string(), json!({"items": []})));
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

    support::jobs::create_job(&c, ns, "other", "held", json!({})).await;
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
    // The job page's feed had that job's changes, and nothing of the other's.
    loop {
        let (event, data) = one.next().await;
        assert_eq!((event.as_str(), &data["name"]), ("job", &json!("live")), "{data}");
        if data["nodes"]["ready"] == 2 {
            break;
        }
    }
    Api::<TrainJob>::namespaced(c.clone(), ns)
        .delete("live", &Default::default())
        .await
        .expect("delete");
    feed.until("the job gone", |e, d| e == "gone" && d["name"] == "live")
        .await;
}

#[tokio::test]
async fn the_live_feed_paces_a_stream_of_changes_and_ends_on_the_last() {
    let (ns, c) = setup("dash-pace").await;
    let ns = ns.name.as_str();
    grant_edit(&c, ns, Identity::TenantA).await;
    runtime(&c, ns, "mpi-openmpi", "held", |_| {}).await;
    let app = dashboard().await;
    let feed = open_feed(&app, &format!("/api/namespaces/{ns}/feed?job=busy")).await;
    let mut feed = support::sse::Events::new(feed.into_body().into_data_stream());
    assert_eq!(feed.next().await.0, "snapshot");
    let jobs = support::jobs::create_job(&c, ns, "busy", "held", json!({"suspend": true})).await;
    feed.until("the job", |e, d| e == "job" && d["name"] == "busy")
        .await;
    // Training code reporting on every step: each change is a new view of the job.
    const CHANGES: i64 = 40;
    let started = std::time::Instant::now();
    for percent in 1..=CHANGES {
        let patch = json!({"status": {"trainerStatus": {
            "progressPercentage": percent, "lastUpdatedTime": "2026-12-06T10:00:00Z",
        }}});
        jobs.patch_status("busy", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("a progress change");
    }
    let mut views = 0.0;
    loop {
        let (event, data) = feed.next().await;
        assert_eq!(event, "job", "{data}");
        views += 1.0;
        if data["progress"]["percent"] == CHANGES {
            break;
        }
    }
    // A few sends at once, then one a second, each with the latest view: never more views than
    // the pace allows however fast the changes came (one more for a view of the job's creation
    // sent just before them), and the last change always among them.
    let allowed =
        dashboard::SENDS_AT_ONCE + 1.0 + started.elapsed().as_secs_f64() * dashboard::SENDS_PER_SECOND;
    assert!(
        views <= allowed.ceil(),
        "{views} views of {CHANGES} changes in {:?}: at most {allowed:.1}",
        started.elapsed()
    );
}

/// The tenant's live feed at `path`, once the API server lets the tenant read there (a new
/// role binding takes a moment).
async fn open_feed(app: &Router, path: &str) -> http::Response<Body> {
    eventually("the tenant's feed", DEADLINE, || async {
        let request = Request::get(path)
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
    .await
}

/// The list's rows as the page shows them: name → (phase, reason text, nodes text).
const ROWS: &str = "return Object.fromEntries([...document.querySelectorAll('#jobs tr[data-job]')].map(r => \
     [r.dataset.job, {phase: r.dataset.phase, reason: r.querySelector('.reason').textContent, \
     nodes: r.querySelector('.nodes').textContent}]))";

#[tokio::test]
async fn the_page_in_chromium_follows_creates_and_deletes_each_tenants_jobs() {
    let (a, c) = setup("page-a").await;
    let (b, _) = setup("page-b").await;
    let (a, b) = (a.name.as_str(), b.name.as_str());
    grant_edit(&c, a, Identity::TenantA).await;
    grant_edit(&c, b, Identity::TenantB).await;
    runtime(&c, a, "mpi-openmpi", "held", |rt| {
        pod_meta(rt, "launcher")["annotations"][HOLD] = json!("true");
    })
    .await;
    runtime(&c, a, "mpi-openmpi", "crashing", |rt| {
        pod_meta(rt, "launcher")["annotations"][EXIT] = json!("3");
    })
    .await;
    let base = support::browser::dashboard().await;
    let driver = Driver::start();
    let alice = Browser::open(&driver).await;

    // Signing in: a token the cluster does not know is refused in words; alice's is taken and
    // kept where the page's script cannot read it.
    alice.goto(&format!("{base}/")).await;
    alice.fill("#token", "not-a-token-anyone-knows").await;
    alice.click("#signin button[type=submit]").await;
    alice
        .until(
            "the refusal of a wrong token",
            DEADLINE,
            "return document.querySelector('#signin .note.failed')?.textContent",
            |v| {
                v.as_str()
                    .filter(|t| t.contains("does not accept this token"))
                    .map(|_| ())
            },
        )
        .await;
    sign_in(&alice, &base, Identity::TenantA).await;
    let cookies = alice.eval("return document.cookie", vec![]).await;
    assert!(!cookies.to_string().contains("tenant-a-token"), "{cookies}");

    // A job applied with kubectl appears in the open list by itself; its annotation's markup
    // stays text.
    alice.goto(&format!("{base}/#/{a}")).await;
    alice
        .until(
            "the empty list",
            DEADLINE,
            "return document.querySelector('.live')?.textContent",
            |v| (v.as_str() == Some("Live")).then_some(()),
        )
        .await;
    let markup = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>";
    let manifest = json!({
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
        "metadata": {"name": "applied", "namespace": a, "labels": {"team": "vision"},
                     "annotations": {"description": markup}},
        "spec": {"runtimeRef": {"kind": "TrainingRuntime", "name": "held"}},
    });
    eventually("kubectl apply as alice", DEADLINE, || async {
        bed()
            .kubectl_as(Identity::TenantA, &["apply", "-f", "-"], &manifest.to_string())
            .map_err(|e| e.to_string())
    })
    .await;
    alice
        .until(
            "the applied job running, both workers ready",
            DEADLINE,
            ROWS,
            |rows| {
                let row = &rows["applied"];
                (row["phase"] == "Running" && row["nodes"].as_str()?.ends_with("2/2")).then_some(())
            },
        )
        .await;
    alice.screenshot("dashboard-list").await;

    // Its page: the pods, the timeline, the annotation as text, no script run.
    alice.click("#jobs tr[data-job=applied] a").await;
    let shown = alice
        .until("the job's page", DEADLINE, "return document.querySelector('#pods-table') && document.querySelector('#labels-list') && \
             {pods: document.querySelectorAll('#pods-table tbody tr').length, labels: document.querySelector('#labels-list').textContent, \
              images: document.querySelectorAll('#labels-list img, #labels-list script').length, pwned: window.pwned ?? null, \
              milestones: [...document.querySelectorAll('svg.timeline [data-milestone]')].map(g => g.dataset.milestone)}", |v| {
            (v["pods"] == 3 && v["milestones"].as_array()?.len() >= 3).then(|| v.clone())
        })
        .await;
    assert!(
        shown["labels"].as_str().unwrap_or_default().contains(markup),
        "{shown}"
    );
    assert_eq!(shown["images"], 0, "{shown}");
    assert_eq!(shown["pwned"], Value::Null, "{shown}");
    assert!(
        shown["labels"].as_str().unwrap_or_default().contains("vision"),
        "{shown}"
    );
    // This cluster serves no metrics.k8s.io: no CPU or memory columns, once the page has asked.
    let heads = alice
        .until(
            "the answer about usage",
            DEADLINE,
            "return document.querySelector('#pods').dataset.usage === 'absent' && \
             [...document.querySelectorAll('#pods-table th')].map(th => th.textContent)",
            |v| v.as_array().cloned(),
        )
        .await;
    assert_eq!(heads.len(), 9, "{heads:?}");
    assert!(!heads.iter().any(|h| h == "CPU" || h == "Memory"), "{heads:?}");
    alice.screenshot("dashboard-job").await;

    // A job whose launcher fails shows why and what to change, as the operator wrote it.
    bed()
        .kubectl_as(
            Identity::TenantA,
            &["create", "-f", "-"],
            &json!({
                "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                "metadata": {"name": "crashes", "namespace": a},
                "spec": {"runtimeRef": {"kind": "TrainingRuntime", "name": "crashing"}},
            })
            .to_string(),
        )
        .expect("kubectl create");
    let (_, failed) = wait_condition(&Api::namespaced(c.clone(), a), "crashes", "Failed").await;
    let message = failed.message.clone();
    alice.goto(&format!("{base}/#/{a}/jobs/crashes")).await;
    let said = alice
        .until(
            "the failure's reason on the page",
            DEADLINE,
            "return document.querySelector('#diagnosis .note.failed')?.textContent",
            |v| v.as_str().filter(|t| t.contains(&message)).map(str::to_string),
        )
        .await;
    assert!(said.contains(&failed.reason), "{said}");
    alice.screenshot("dashboard-failed").await;
    alice.goto(&format!("{base}/#/{a}")).await;
    alice
        .until("the failure in the list", DEADLINE, ROWS, |rows| {
            let row = &rows["crashes"];
            (row["phase"] == "Failed" && row["reason"].as_str()?.contains(&failed.reason)).then_some(())
        })
        .await;

    // The form: a bad name and too many nodes come back on their fields, the markup in the
    // answer as text; then a good job is created and exists in the cluster.
    alice.goto(&format!("{base}/#/{a}/new")).await;
    alice.fill("#f-name", "<b>bold</b>").await;
    alice.select("#f-runtime", "TrainingRuntime/held").await;
    alice.click("#create").await;
    let refused = alice
        .until("the name refused on its field", DEADLINE, "return {invalid: document.querySelector('#f-name').getAttribute('aria-invalid'), \
             error: document.querySelector('#e-name').textContent, outcome: document.querySelector('#outcome').textContent, \
             bold: document.querySelectorAll('#outcome b, #create-form b').length}", |v| {
            (v["invalid"] == "true").then(|| v.clone())
        })
        .await;
    assert!(
        refused["outcome"]
            .as_str()
            .unwrap_or_default()
            .contains("<b>bold</b>"),
        "{refused}"
    );
    assert_eq!(refused["bold"], 0, "{refused}");
    alice.fill("#f-name", "from-the-form").await;
    alice.fill("#f-nodes", "0").await;
    alice.click("#create").await;
    let nodes = alice
        .until(
            "zero nodes refused on the field",
            DEADLINE,
            "return {invalid: document.querySelector('#f-nodes').getAttribute('aria-invalid'), \
             error: document.querySelector('#e-nodes').textContent}",
            |v| (v["invalid"] == "true").then(|| v.clone()),
        )
        .await;
    assert!(
        nodes["error"]
            .as_str()
            .unwrap_or_default()
            .contains("numNodes must be at least 1"),
        "{nodes}"
    );
    alice.screenshot("dashboard-create").await;
    alice.fill("#f-nodes", "3").await;
    alice.fill("#f-image", "trainjob.local/openmpi4:bed").await;
    alice.fill("#f-command", "mpirun\n-n\n3\nhostname").await;
    alice.click("#create").await;
    alice
        .until("the new job's page", DEADLINE, "return location.hash", |v| {
            v.as_str()
                .filter(|h| h.ends_with("/jobs/from-the-form"))
                .map(|_| ())
        })
        .await;
    let made = Api::<TrainJob>::namespaced(c.clone(), a)
        .get("from-the-form")
        .await
        .expect("the job the form created");
    let trainer = made.spec.trainer.expect("trainer");
    assert_eq!(trainer.num_nodes, Some(3));
    assert_eq!(trainer.image.as_deref(), Some("trainjob.local/openmpi4:bed"));
    assert_eq!(trainer.command, ["mpirun", "-n", "3", "hostname"]);

    // The same form as YAML: what the form says, editable, and created as written.
    alice.goto(&format!("{base}/#/{a}/new")).await;
    alice.fill("#f-name", "from-yaml").await;
    alice.select("#f-runtime", "TrainingRuntime/held").await;
    alice.click("#tab-yaml").await;
    let yaml = alice
        .until(
            "the YAML of the form",
            DEADLINE,
            "return document.querySelector('#f-yaml').value",
            |v| {
                v.as_str()
                    .filter(|y| y.contains("name: \"from-yaml\""))
                    .map(str::to_string)
            },
        )
        .await;
    alice
        .fill("#f-yaml", &yaml.replace("numNodes: 2", "numNodes: 1"))
        .await;
    alice.click("#create-yaml").await;
    alice
        .until("the YAML job's page", DEADLINE, "return location.hash", |v| {
            v.as_str().filter(|h| h.ends_with("/jobs/from-yaml")).map(|_| ())
        })
        .await;
    let made = Api::<TrainJob>::namespaced(c.clone(), a)
        .get("from-yaml")
        .await
        .expect("the job the YAML created");
    assert_eq!(made.spec.trainer.and_then(|t| t.num_nodes), Some(1));

    // Delete asks first, then the job is gone from the cluster and from the list.
    alice.goto(&format!("{base}/#/{a}/jobs/applied")).await;
    alice.click("#delete").await;
    let asked = alice
        .until("the confirmation", DEADLINE, "return document.querySelector('#confirm').open && document.querySelector('#confirm-text').textContent", |v| {
            v.as_str().map(str::to_string)
        })
        .await;
    assert!(asked.contains("applied"), "{asked}");
    alice.click("#confirm-delete").await;
    eventually("the job deleted", DEADLINE, || async {
        match Api::<TrainJob>::namespaced(c.clone(), a).get_opt("applied").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    alice
        .until("the list without it", DEADLINE, ROWS, |rows| {
            (rows.get("applied").is_none() && rows.get("crashes").is_some()).then_some(())
        })
        .await;

    // Bob signs in in his own browser: alice's namespace is refused in the API server's words,
    // and his own list has only his job.
    bed()
        .kubectl_as(
            Identity::TenantB,
            &["create", "-f", "-"],
            &json!({
                "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                "metadata": {"name": "bobs", "namespace": b},
                "spec": {"runtimeRef": {"name": "mpi-openmpi"}},
            })
            .to_string(),
        )
        .expect("bob's job");
    let bob = Browser::open(&driver).await;
    sign_in(&bob, &base, Identity::TenantB).await;
    bob.goto(&format!("{base}/#/{a}")).await;
    let refused = bob
        .until("alice's namespace refused to bob", DEADLINE, "return {note: document.querySelector('.note.failed')?.textContent, rows: document.querySelectorAll('#jobs tr[data-job]').length}", |v| {
            v["note"].as_str().filter(|t| t.contains("forbidden")).map(|_| v.clone())
        })
        .await;
    assert_eq!(refused["rows"], 0, "{refused}");
    bob.goto(&format!("{base}/#/{a}/jobs/crashes")).await;
    bob.until(
        "alice's job refused to bob",
        DEADLINE,
        "return document.querySelector('.note.failed')?.textContent",
        |v| v.as_str().filter(|t| t.contains("forbidden")).map(|_| ()),
    )
    .await;
    bob.goto(&format!("{base}/#/{b}")).await;
    bob.until("bob's own list", DEADLINE, ROWS, |rows| {
        let names: Vec<&String> = rows.as_object()?.keys().collect();
        (names == ["bobs"]).then_some(())
    })
    .await;

    // Signing out forgets the token: the next request needs a sign-in again.
    bob.click("#sign-out").await;
    bob.until(
        "the sign-in page",
        DEADLINE,
        "return !!document.querySelector('#token')",
        |v| (v == &Value::Bool(true)).then_some(()),
    )
    .await;
    bob.goto(&format!("{base}/#/{b}")).await;
    bob.until(
        "the sign-in page after a reload",
        DEADLINE,
        "return !!document.querySelector('#token')",
        |v| (v == &Value::Bool(true)).then_some(()),
    )
    .await;
    alice.close().await;
    bob.close().await;
}

/// The dashboard's release binary (`trainjob-dashboard`, built beside the operator's), as
/// `config/dashboard` runs it: each request acts as its bearer token's user.
#[tokio::test]
async fn the_release_binary_answers_each_request_as_its_tokens_user() {
    let ns = support::TestNs::new("dash-bin").await;
    grant_edit(
        &support::client(Identity::Admin).await,
        &ns.name,
        Identity::TenantA,
    )
    .await;
    let port = support::free_port();
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-binary.log");
    let _server = support::process::OperatorProcess::dashboard(bed(), port, log).await;
    let jobs = format!("http://127.0.0.1:{port}/api/namespaces/{}/trainjobs", ns.name);
    let status = |who: Identity| {
        let jobs = jobs.clone();
        async move {
            support::sse::get(&jobs, &who.token())
                .await
                .map(|(status, _)| status)
        }
    };
    // The binding reaches the authorizer a moment after it is created.
    eventually("tenant A's list through the binary", DEADLINE, || async {
        match status(Identity::TenantA).await? {
            StatusCode::OK => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await;
    assert_eq!(status(Identity::TenantB).await, Ok(StatusCode::FORBIDDEN));
}
