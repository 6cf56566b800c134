//! The OpenAPI 3.1 document of the dashboard's API. The paths are written here; the schemas of
//! the answers are generated from the Rust types the handlers serialize, so the document cannot
//! drift from what the server sends.

use axum::Json;
use schemars::generate::SchemaSettings;
use serde_json::{Value, json};

use super::api::{Detailed, Listed, Problem, RuntimeRow, Usage};
use super::session::Session;
use crate::view::JobView;

/// `GET /api/openapi.json`.
pub async fn document() -> Json<Value> {
    Json(build())
}

/// The whole document.
pub fn build() -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    generator.subschema_for::<Listed>();
    generator.subschema_for::<JobView>();
    generator.subschema_for::<Problem>();
    generator.subschema_for::<Detailed>();
    generator.subschema_for::<Session>();
    generator.subschema_for::<RuntimeRow>();
    generator.subschema_for::<Usage>();
    let schemas: serde_json::Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    let problem = |what: &str| json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    let ns = json!({"name": "ns", "in": "path", "required": true, "schema": {"type": "string"}});
    let name = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    let refusals = |mut responses: Value| {
        for (code, what) in [
            ("401", "no usable identity: sign in"),
            (
                "403",
                "the user may not do this in the namespace (the API server's RBAC)",
            ),
            ("404", "no such job"),
            ("502", "the cluster did not answer"),
        ] {
            responses[code] = problem(what);
        }
        responses
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "trainjob-operator dashboard",
            "version": crate::VERSION,
            "description": "Every call acts as the person making it (their bearer token or the token they signed in with, or the kubeconfig's user locally), so what it shows and may change is what Kubernetes RBAC allows them. Writes must carry the header x-trainjob-dashboard.",
        },
        "paths": {
            "/api/session": {
                "get": {
                    "summary": "Who requests act as now (signedIn false when no one)",
                    "responses": {"200": {"description": "the session", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Session"}}}}},
                },
                "post": {
                    "summary": "Sign in with a Kubernetes token: the API server is asked who it is, then it is kept in an HttpOnly, SameSite=Strict cookie",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object", "required": ["token"], "properties": {"token": {"type": "string"}},
                    }}}},
                    "responses": {
                        "200": {"description": "signed in", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Session"}}}},
                        "400": problem("not a token, or a dashboard that acts as its kubeconfig's user"),
                        "401": problem("the cluster does not accept the token"),
                        "502": problem("the cluster did not answer"),
                    },
                },
                "delete": {
                    "summary": "Sign out (the cookie is dropped)",
                    "responses": {"204": {"description": "signed out"}},
                },
            },
            "/api/namespaces/{ns}/runtimes": {
                "get": {
                    "summary": "The ClusterTrainingRuntimes and the namespace's TrainingRuntimes the user may read",
                    "parameters": [ns],
                    "responses": refusals(json!({"200": {"description": "the runtimes", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["items"],
                        "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/RuntimeRow"}}},
                    }}}}})),
                },
            },
            "/api/namespaces/{ns}/trainjobs/{name}/usage": {
                "get": {
                    "summary": "CPU and memory of the job's pods from metrics.k8s.io; available false where the cluster does not serve it or the user may not read it",
                    "parameters": [ns, name],
                    "responses": refusals(json!({"200": {"description": "the usage", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["available", "pods"],
                        "properties": {"available": {"type": "boolean"}, "pods": {"type": "array", "items": {"$ref": "#/components/schemas/Usage"}}},
                    }}}}})),
                },
            },
            "/api/namespaces/{ns}/trainjobs": {
                "get": {
                    "summary": "Every TrainJob of the namespace with its view",
                    "parameters": [ns],
                    "responses": refusals(json!({"200": {"description": "the jobs", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["items"],
                        "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Listed"}}},
                    }}}}})),
                },
                "post": {
                    "summary": "Create a TrainJob (judged by the API server and the admission webhook)",
                    "parameters": [ns],
                    "requestBody": {"required": true, "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "application/yaml": {"schema": {"type": "string"}},
                    }},
                    "responses": refusals(json!({
                        "201": {"description": "created", "content": {"application/json": {"schema": {
                            "type": "object", "required": ["namespace", "name"],
                            "properties": {"namespace": {"type": "string"}, "name": {"type": "string"}},
                        }}}},
                        "400": problem("not a TrainJob"),
                        "409": problem("a TrainJob of that name exists"),
                        "422": problem("refused field by field (`fields`)"),
                    })),
                },
            },
            "/api/namespaces/{ns}/trainjobs/{name}": {
                "get": {
                    "summary": "The whole view of one job: conditions, diagnosis, pods, timeline, Events, progress",
                    "parameters": [ns, name],
                    "responses": refusals(json!({"200": {"description": "the job", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Detailed"}}}}})),
                },
                "delete": {
                    "summary": "Delete the job (its pods go with it)",
                    "parameters": [ns, name],
                    "responses": refusals(json!({"200": {"description": "deleted", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["namespace", "name", "deleted"],
                        "properties": {"namespace": {"type": "string"}, "name": {"type": "string"}, "deleted": {"type": "boolean"}},
                    }}}}})),
                },
            },
            "/api/namespaces/{ns}/trainjobs/{name}/logs": {
                "get": {
                    "summary": "The launcher's and every worker's logs merged in time order, each line prefixed with its role and index; with follow=true as Server-Sent Events: `line` ({prefix, at, text}) for what was written so far and then every new line, through restarts, `end` once the job has ended, `problem` ({message}) if following fails",
                    "parameters": [
                        ns, name,
                        {"name": "tail", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                        {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                    ],
                    "responses": refusals(json!({"200": {"description": "the lines", "content": {
                        "text/plain": {"schema": {"type": "string"}},
                        "text/event-stream": {"schema": {"type": "string"}},
                    }}})),
                },
            },
            "/api/namespaces/{ns}/feed": {
                "get": {
                    "summary": "Live changes of the namespace's jobs, or of the one job named by `job` (Server-Sent Events): `snapshot` ({items: [Listed]}), then `job` (a Listed whose view changed), `gone` ({name}), and `problem` ({message}) if the feed stops",
                    "parameters": [ns, {"name": "job", "in": "query", "schema": {"type": "string"}}],
                    "responses": refusals(json!({"200": {"description": "the event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}})),
                },
            },
        },
        "components": {"schemas": schemas},
    })
}
