//! An in-process schema registry speaking the subset of the Confluent REST API the
//! client and the tests call, with the status codes and error bodies Confluent's
//! API reference gives. No Confluent-compatible registry is installable here
//! (Karapace is not on PyPI; Confluent's is a Java download), so this stands in.
//!
//! - `POST /subjects/{subject}/versions` `{"schema", "schemaType"?, "references"?}`
//!   -> `{"id"}`; the same schema text and type gets the same global id; an Avro
//!   schema that does not parse -> 422 `{"error_code":42201}`.
//! - `GET /schemas/ids/{id}` -> `{"schema", "schemaType"?}` (`schemaType` omitted
//!   for Avro, as Confluent does) or 404 `{"error_code":40403,"message":"Schema 7 not found"}`.
//! - `GET /subjects/{subject}/versions/latest` and `.../versions/{v}` ->
//!   `{"subject","id","version","schema","schemaType"?}`, or 404 with 40401 (subject)
//!   or 40402 (version).
//! - `references` (name, subject, version) kept with a schema and returned with it.
//! - Basic auth when credentials are set: 401 `{"error_code":401,"message":"Unauthorized"}`.
//!
//! Every request is counted, so tests can assert the client's cache works.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// A schema reference: (import name, subject, version).
pub type Reference = (String, String, u32);

#[derive(Default)]
struct Store {
    /// Global schemas: (type, text, references); id = index + 1.
    schemas: Vec<(String, String, Vec<Reference>)>,
    /// subject -> schema ids by version (version = index + 1).
    subjects: Vec<(String, Vec<u32>)>,
    /// Ids answered 40403 for now (a follower that has not replicated them yet,
    /// or a schema hard-deleted).
    hidden: Vec<u32>,
}

struct Inner {
    store: Mutex<Store>,
    auth: Option<(String, String)>,
    requests: AtomicU64,
}

/// A running registry on 127.0.0.1.
pub struct TestRegistry {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn error(status: StatusCode, code: u32, message: String) -> Response {
    reply(status, json!({"error_code": code, "message": message}))
}

impl TestRegistry {
    /// Start on an ephemeral port; `auth` = required basic-auth credentials.
    pub async fn start(auth: Option<(&str, &str)>) -> Self {
        let inner = Arc::new(Inner {
            store: Mutex::default(),
            auth: auth.map(|(u, p)| (u.to_owned(), p.to_owned())),
            requests: AtomicU64::new(0),
        });
        let app = axum::Router::new()
            .route("/subjects/{subject}/versions", post(register))
            .route("/subjects/{subject}/versions/{version}", get(by_version))
            .route("/schemas/ids/{id}", get(by_id))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, inner, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Answer 40403 for `id` (`hidden`), or serve it again.
    pub fn hide(&self, id: u32, hidden: bool) {
        let mut store = self.inner.store.lock().unwrap();
        store.hidden.retain(|h| *h != id);
        if hidden {
            store.hidden.push(id);
        }
    }

    /// Register directly (what a producer's serializer does over HTTP).
    pub fn register(&self, subject: &str, kind: &str, text: &str) -> u32 {
        self.register_with_references(subject, kind, text, &[])
    }

    /// Register a schema that imports others (already registered under the
    /// referenced subject and version).
    pub fn register_with_references(
        &self,
        subject: &str,
        kind: &str,
        text: &str,
        references: &[Reference],
    ) -> u32 {
        register_in(
            &mut self.inner.store.lock().unwrap(),
            subject,
            kind,
            text,
            references.to_vec(),
        )
    }
}

fn register_in(
    store: &mut Store,
    subject: &str,
    kind: &str,
    text: &str,
    references: Vec<Reference>,
) -> u32 {
    let id = match store
        .schemas
        .iter()
        .position(|(k, t, r)| k == kind && t == text && *r == references)
    {
        Some(i) => i as u32 + 1,
        None => {
            store
                .schemas
                .push((kind.to_owned(), text.to_owned(), references));
            store.schemas.len() as u32
        }
    };
    match store.subjects.iter_mut().find(|(s, _)| s == subject) {
        Some((_, versions)) => {
            if !versions.contains(&id) {
                versions.push(id);
            }
        }
        None => store.subjects.push((subject.to_owned(), vec![id])),
    }
    id
}

/// The 401 to send, when the credentials are missing or wrong.
fn check_auth(inner: &Inner, headers: &HeaderMap) -> Option<Response> {
    inner.requests.fetch_add(1, Ordering::Relaxed);
    let (user, pass) = inner.auth.as_ref()?;
    use base64::Engine;
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    );
    match headers.get(header::AUTHORIZATION) {
        Some(v) if v.as_bytes() == expected.as_bytes() => None,
        _ => Some(error(
            StatusCode::UNAUTHORIZED,
            401,
            "Unauthorized".to_owned(),
        )),
    }
}

fn schema_body(kind: &str, text: &str, references: &[Reference]) -> serde_json::Map<String, Value> {
    let mut body = serde_json::Map::new();
    body.insert("schema".into(), Value::from(text));
    if kind != "AVRO" {
        body.insert("schemaType".into(), Value::from(kind));
    }
    if !references.is_empty() {
        body.insert(
            "references".into(),
            references
                .iter()
                .map(|(name, subject, version)| {
                    json!({"name": name, "subject": subject, "version": version})
                })
                .collect(),
        );
    }
    body
}

async fn register(
    State(inner): State<Arc<Inner>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Some(r) = check_auth(&inner, &headers) {
        return r;
    }
    let Ok(req) = serde_json::from_str::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            400,
            "Unrecognized request body: not JSON".into(),
        );
    };
    let kind = req
        .get("schemaType")
        .and_then(Value::as_str)
        .unwrap_or("AVRO")
        .to_owned();
    let Some(text) = req.get("schema").and_then(Value::as_str) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            "Invalid schema: missing `schema`".into(),
        );
    };
    if kind == "AVRO"
        && let Err(e) = apache_avro::Schema::parse_str(text)
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema {text}, details: {e}"),
        );
    }
    let references: Vec<Reference> = req
        .get("references")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| {
                    Some((
                        r.get("name")?.as_str()?.to_owned(),
                        r.get("subject")?.as_str()?.to_owned(),
                        u32::try_from(r.get("version")?.as_u64()?).ok()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let id = register_in(
        &mut inner.store.lock().unwrap(),
        &subject,
        &kind,
        text,
        references,
    );
    reply(StatusCode::OK, json!({ "id": id }))
}

async fn by_id(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<u32>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = check_auth(&inner, &headers) {
        return r;
    }
    let store = inner.store.lock().unwrap();
    match id
        .checked_sub(1)
        .filter(|_| !store.hidden.contains(&id))
        .and_then(|i| store.schemas.get(i as usize))
    {
        Some((kind, text, refs)) => {
            reply(StatusCode::OK, Value::Object(schema_body(kind, text, refs)))
        }
        None => error(
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {id} not found"),
        ),
    }
}

async fn by_version(
    State(inner): State<Arc<Inner>>,
    Path((subject, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = check_auth(&inner, &headers) {
        return r;
    }
    let store = inner.store.lock().unwrap();
    let Some((_, versions)) = store.subjects.iter().find(|(s, _)| *s == subject) else {
        return error(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        );
    };
    let index = match version.as_str() {
        "latest" | "-1" => versions.len().checked_sub(1),
        v => v
            .parse::<usize>()
            .ok()
            .and_then(|v| v.checked_sub(1))
            .filter(|i| *i < versions.len()),
    };
    let Some(index) = index else {
        return error(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found."),
        );
    };
    let id = versions[index];
    let (kind, text, refs) = &store.schemas[id as usize - 1];
    let mut body = schema_body(kind, text, refs);
    body.insert("subject".into(), Value::from(subject.clone()));
    body.insert("id".into(), Value::from(id));
    body.insert("version".into(), Value::from(index as u32 + 1));
    reply(StatusCode::OK, Value::Object(body))
}
