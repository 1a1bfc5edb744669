//! Confluent-compatible schema registry: the client, the schema cache and the wire
//! format.
//!
//! Records in a registry format carry a 5-byte prefix: magic byte `0`, then the
//! schema id as a big-endian `u32`. Protobuf adds the message-index array after it.
//! [`Registry`] looks ids up (`GET /schemas/ids/{id}`) and keeps every answer for
//! the life of the process: a registered schema never changes, so one fetch per
//! id is all a worker ever makes. Lookups go through `schema_registry_converter`
//! (basic or bearer auth, several URLs, timeouts), over rustls with an optional
//! extra CA.
//!
//! Errors are sorted by what the pipeline must do with them: a schema the registry
//! does not have (`40403`) condemns the records that name it (dead letters); an
//! unreachable or failing registry is transient (retry with backoff, lose
//! nothing); rejected credentials stop the pipeline with a message that says so.

pub mod avro;
pub mod decoder;
pub mod framed;
pub mod json_schema;
pub mod protobuf;

use crate::decode::Reason;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_schema_by_id, get_schema_by_subject_and_version,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{RawError, SchemaType};

use crate::secret::Secret;

/// The Confluent wire-format magic byte.
pub const MAGIC: u8 = 0;

/// Split a Confluent-framed value into schema id and payload.
pub fn split_frame(value: &[u8]) -> Result<(u32, &[u8]), Reason> {
    match value {
        [] => Err(Reason::from("empty value: no Confluent wire-format header")),
        [m, ..] if *m != MAGIC => Err(Reason::from(format!(
            "not Confluent wire format: first byte is 0x{m:02x}, expected magic byte 0x00"
        ))),
        [_, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        _ => Err(Reason::from(format!(
            "truncated Confluent header: {} byte(s), expected 5",
            value.len()
        ))),
    }
}

/// How to reach the registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Base URLs, tried in order.
    pub urls: Vec<String>,
    /// Basic-auth user (Confluent Cloud: the API key).
    pub username: Option<String>,
    /// Basic-auth password (Confluent Cloud: the API secret).
    pub password: Option<Secret>,
    /// Bearer token, instead of basic auth.
    pub bearer_token: Option<Secret>,
    /// PEM file of an extra CA to trust (a private registry's TLS).
    pub ca_file: Option<PathBuf>,
    /// Per-request timeout.
    pub timeout: Duration,
}

/// The format of a registered schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaKind {
    /// Avro (the registry's default).
    Avro,
    /// Protobuf.
    Protobuf,
    /// JSON Schema.
    Json,
}

impl std::fmt::Display for SchemaKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SchemaKind::Avro => "AVRO",
            SchemaKind::Protobuf => "PROTOBUF",
            SchemaKind::Json => "JSON",
        })
    }
}

/// A schema as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// Global id.
    pub id: u32,
    /// Its format.
    pub kind: SchemaKind,
    /// The schema text (Avro JSON, `.proto` source, or JSON Schema).
    pub text: String,
    /// Schemas it references: (import name, subject, version).
    pub references: Vec<(String, String, u32)>,
}

/// What went wrong talking to the registry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered that it has no such schema, subject or version.
    #[error("{what} not found in the schema registry (error_code {code}: {message})")]
    NotFound {
        /// What was asked for.
        what: String,
        /// The registry's `error_code` (40401, 40402, 40403).
        code: u32,
        /// The registry's message.
        message: String,
    },
    /// The registry refused the credentials.
    #[error(
        "the schema registry refused the credentials (HTTP {code}: {message}); check \
         schema_registry.username/password or bearer_token"
    )]
    Unauthorized {
        /// HTTP status or error code.
        code: u32,
        /// The registry's message.
        message: String,
    },
    /// The registry could not be reached or failed; worth retrying.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    /// The answer cannot be used (unknown schema type, bad settings).
    #[error("schema registry: {0}")]
    Invalid(String),
}

impl RegistryError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable(_))
    }

    fn from_src(e: SRCError, what: impl Into<String>) -> Self {
        let raw = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<RawError>());
        let refused = matches!(http_status(&e), Some(401 | 403));
        match raw {
            Some(r) if (40400..40500).contains(&r.error_code) || r.error_code == 404 => {
                RegistryError::NotFound {
                    what: what.into(),
                    code: r.error_code,
                    message: r.message.clone(),
                }
            }
            Some(r) if refused || matches!(r.error_code, 401 | 403 | 40101 | 40301) => {
                RegistryError::Unauthorized {
                    code: r.error_code,
                    message: r.message.clone(),
                }
            }
            _ if refused => RegistryError::Unauthorized {
                code: 401,
                message: e.error.clone(),
            },
            _ => RegistryError::Unavailable(e.to_string()),
        }
    }
}

/// The HTTP status of a registry call that failed with one. The client keeps
/// it only in its message ("HTTP request to schema registry failed with status
/// 401 Unauthorized"), so the status code is parsed from exactly that place.
fn http_status(e: &SRCError) -> Option<u16> {
    const PREFIX: &str = "HTTP request to schema registry failed with status ";
    let rest = e.error.strip_prefix(PREFIX)?;
    rest.split(' ').next()?.parse().ok()
}

/// Registry answers by schema id: the schema, or why there is none.
type SchemaCache = HashMap<u32, Result<Arc<Schema>, RegistryError>>;

/// A registry client with an id -> schema cache.
#[derive(Clone)]
pub struct Registry {
    settings: SrSettings,
    cache: Arc<Mutex<SchemaCache>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// A client for `cfg`. Fails on a CA file that cannot be read or parsed.
    pub fn new(cfg: &RegistryConfig) -> Result<Self, RegistryError> {
        let mut urls = cfg.urls.iter();
        let first = urls
            .next()
            .ok_or_else(|| RegistryError::Invalid("no registry URL configured".into()))?;
        let mut builder = SrSettings::new_builder(first.trim_end_matches('/').to_owned());
        for u in urls {
            builder.add_url(u.trim_end_matches('/').to_owned());
        }
        if let Some(token) = &cfg.bearer_token {
            builder.set_token_authorization(token.expose());
        } else if let Some(user) = &cfg.username {
            builder.set_basic_authorization(user, cfg.password.as_ref().map(Secret::expose));
        }
        builder.set_timeout(cfg.timeout);
        let mut client = reqwest::Client::builder();
        if let Some(path) = &cfg.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                RegistryError::Invalid(format!("cannot read CA file {}: {e}", path.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                RegistryError::Invalid(format!("CA file {} is not PEM: {e}", path.display()))
            })?;
            for c in certs {
                client = client.add_root_certificate(c);
            }
        }
        let settings = builder
            .build_with(client)
            .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        Ok(Self {
            settings,
            cache: Arc::default(),
        })
    }

    /// The schema with global id `id`. Answers (found or not found) are cached;
    /// transient failures are not.
    pub async fn schema(&self, id: u32) -> Result<Arc<Schema>, RegistryError> {
        if let Some(hit) = self.cache.lock().expect("registry cache").get(&id) {
            return hit.clone();
        }
        let result = match get_schema_by_id(id, &self.settings).await {
            Ok(s) => convert(id, s.schema_type, s.schema, &s.references).map(Arc::new),
            Err(e) => Err(RegistryError::from_src(e, format!("schema id {id}"))),
        };
        if !matches!(
            result,
            Err(RegistryError::Unavailable(_) | RegistryError::Unauthorized { .. })
        ) {
            self.cache
                .lock()
                .expect("registry cache")
                .insert(id, result.clone());
        }
        if let Ok(s) = &result {
            tracing::info!(id, kind = %s.kind, "fetched schema from the registry");
        }
        result
    }

    /// The texts of every schema `schema` references, directly or through others,
    /// by import name (Protobuf imports).
    pub async fn references(
        &self,
        schema: &Schema,
    ) -> Result<Vec<(String, String)>, RegistryError> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut todo = schema.references.clone();
        while let Some((name, subject, version)) = todo.pop() {
            if out.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let s = get_schema_by_subject_and_version(&self.settings, &subject, Some(version))
                .await
                .map_err(|e| {
                    RegistryError::from_src(e, format!("reference `{name}` ({subject} v{version})"))
                })?;
            let referenced = convert(s.id, s.schema_type, s.schema, &s.references)?;
            todo.extend(referenced.references.iter().cloned());
            out.push((name, referenced.text));
        }
        Ok(out)
    }

    /// The latest version registered under `subject`.
    pub async fn latest(&self, subject: &str) -> Result<Arc<Schema>, RegistryError> {
        let s = get_schema_by_subject_and_version(&self.settings, subject, None)
            .await
            .map_err(|e| RegistryError::from_src(e, format!("subject `{subject}`")))?;
        let schema = Arc::new(convert(s.id, s.schema_type, s.schema, &s.references)?);
        self.cache
            .lock()
            .expect("registry cache")
            .insert(schema.id, Ok(schema.clone()));
        Ok(schema)
    }
}

fn convert(
    id: u32,
    kind: SchemaType,
    text: String,
    references: &[schema_registry_converter::schema_registry_common::RegisteredReference],
) -> Result<Schema, RegistryError> {
    let kind = match kind {
        SchemaType::Avro => SchemaKind::Avro,
        SchemaType::Protobuf => SchemaKind::Protobuf,
        SchemaType::Json => SchemaKind::Json,
        other => {
            return Err(RegistryError::Invalid(format!(
                "schema id {id} has type {other:?}, which tributary cannot decode"
            )));
        }
    };
    Ok(Schema {
        id,
        kind,
        text,
        references: references
            .iter()
            .map(|r| (r.name.clone(), r.subject.clone(), r.version))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_refusal_is_known_by_its_status_code_not_by_text_elsewhere() {
        let e = |m: &str| schema_registry_converter::error::SRCError::new(m, None, false);
        let status = |m: &str| super::http_status(&e(m));
        assert_eq!(
            status("HTTP request to schema registry failed with status 401 Unauthorized"),
            Some(401)
        );
        assert_eq!(
            status("HTTP request to schema registry failed with status 503 Service Unavailable"),
            Some(503)
        );
        // A 401 elsewhere in a message (a subject, a schema id) is no status.
        assert_eq!(
            status("could not find schema 401 for subject status-401"),
            None
        );
    }

    use super::*;

    #[test]
    fn frames_are_split_and_bad_headers_named() {
        assert_eq!(
            split_frame(&[0, 0, 0, 1, 2, 9, 9]).unwrap(),
            (258, &[9u8, 9][..])
        );
        assert_eq!(split_frame(&[0, 0, 0, 0, 7]).unwrap(), (7, &[][..]));
        assert!(split_frame(b"").unwrap_err().0.contains("empty"));
        assert!(split_frame(b"{\"a\":1}").unwrap_err().0.contains("0x7b"));
        assert!(split_frame(&[0, 0, 1]).unwrap_err().0.contains("truncated"));
    }
}
