//! Configuration: the TOML file as written by the operator ([`RawConfig`]) and the
//! validated, typed form every other module consumes ([`Config`]).
//!
//! Loading is two steps, so that nothing starts on a config that cannot work:
//!
//! 1. [`RawConfig::parse`] deserializes TOML with unknown keys rejected, after
//!    `${NAME}` references have been expanded from an environment lookup the caller
//!    supplies (the library never reads the process environment itself; `main.rs`
//!    passes `std::env::var`).
//! 2. [`RawConfig::validate`] checks every value and resolves defaults, returning a
//!    [`Config`] or a [`ConfigError`] that names the key and says what to fix.
//!
//! See `examples/config/` and README.md for a complete, commented example.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use url::Url;

use crate::secret::Secret;

pub use crate::decode::{DecodeConfig, Format, OnError};
pub use crate::schema::MetadataColumns;
pub use crate::sink::{
    CommitConfig, Compression, StorageConfig, TableConfig, TableUriError, parse_table_uri,
};
pub use crate::source::{KafkaConfig, OffsetReset, Subscription};
pub use crate::window::FlushPolicy;

/// Errors found while loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file named on the command line.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or mistyped keys.
    #[error("invalid config{}: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, when known.
        path: Option<PathBuf>,
        /// The TOML parser's message, which points at the line and key.
        message: String,
    },
    /// A `${NAME}` reference names an environment variable that is not set.
    #[error(
        "config references environment variable ${{{name}}}, which is not set: export it or replace the reference"
    )]
    MissingEnv {
        /// The variable name.
        name: String,
    },
    /// A value is present but unusable.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// Dotted path of the offending key.
        key: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The table schema file could not be read or parsed.
    #[error("table schema file {path}: {message}")]
    Schema {
        /// The schema file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    fn invalid(key: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            key,
            message: message.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// Raw form: exactly what the TOML file says.
// ---------------------------------------------------------------------------

/// The configuration file as written. Every section rejects unknown keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Identifies this pipeline. Stored offsets live under txn app ids
    /// `<app_id>/<topic>/<partition>`: two pipelines with different ids never see each
    /// other's offsets, so changing it re-reads the topic from `auto_offset_reset`.
    pub app_id: String,
    /// Kafka source settings.
    pub kafka: RawKafka,
    /// Destination table settings.
    pub table: RawTable,
    /// Object store settings (S3 endpoint, region, credentials).
    #[serde(default)]
    pub storage: RawStorage,
    /// When buffered records are written and committed.
    #[serde(default)]
    pub flush: RawFlush,
    /// Delta commit behaviour.
    #[serde(default)]
    pub commit: RawCommit,
    /// Record decoding.
    #[serde(default)]
    pub decode: RawDecode,
    /// Confluent-compatible schema registry, for the registry formats.
    pub schema_registry: Option<RawRegistry>,
    /// Topics routed to tables other than `[table]`, tried in order; topics no route
    /// matches go to `[table]`.
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    /// Where rejected records go.
    pub dead_letters: Option<RawDeadLetters>,
    /// Metrics and health endpoint.
    #[serde(default)]
    pub observability: RawObservability,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
}

/// `[dead_letters]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeadLetters {
    /// The dead-letter Delta table (created when absent).
    pub uri: String,
}

/// `[observability]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObservability {
    /// Address for `/metrics`, `/healthz` and `/readyz` (e.g. `"0.0.0.0:9898"` in a
    /// pod, `"127.0.0.1:9898"` on a shared host). Off when absent.
    pub listen: Option<String>,
}

/// `[log]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// Level or filter, e.g. `info` or `tributary=debug,librdkafka=warn`.
    pub level: Option<String>,
    /// `text` or `json`.
    pub format: Option<String>,
}

/// `[kafka]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// `bootstrap.servers`, comma separated.
    pub brokers: String,
    /// Consumer group id; defaults to the `app_id`.
    pub group_id: Option<String>,
    /// Topics to read (exclusive with `topic_pattern`).
    #[serde(default)]
    pub topics: Vec<String>,
    /// A regular expression over topic names (exclusive with `topics`).
    pub topic_pattern: Option<String>,
    /// Where to start a partition with no offset stored in the table.
    #[serde(default)]
    pub auto_offset_reset: OffsetReset,
    /// librdkafka properties passed through verbatim (e.g. `session.timeout.ms`,
    /// `security.protocol`, `sasl.username`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Maximum records handed from the poll thread to the pipeline in one chunk.
    pub max_chunk_records: Option<usize>,
    /// Chunks queued between the poll thread and the pipeline before the poll thread
    /// pauses its partitions.
    pub channel_capacity: Option<usize>,
}

/// `[table]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    /// `s3://bucket/prefix`, `file:///abs/path` or a plain local path.
    pub uri: String,
    /// A Delta/Spark schema JSON file (`{"type":"struct","fields":[...]}`, as printed
    /// by Spark's `df.schema.json()`), relative to the config file. Required for
    /// `json`; optional for registry formats, whose tables are created from the
    /// registry's latest schema of `decode.subject`.
    pub schema_file: Option<PathBuf>,
    /// Partition columns, used when the table is created.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// `snappy` (default), `zstd`, `zstd(LEVEL)`, `lz4` or `uncompressed`.
    pub compression: Option<String>,
    /// Delta table properties set when the table is created
    /// (e.g. `delta.logRetentionDuration`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Kafka metadata columns added to every row.
    #[serde(default)]
    pub metadata_columns: MetadataColumns,
    /// Maximum rows per Parquet row group.
    pub row_group_rows: Option<usize>,
    /// Rows to keep: a DataFusion SQL boolean expression over the decoded columns.
    pub filter: Option<String>,
    /// Derived columns: name = DataFusion SQL expression over the decoded columns.
    #[serde(default)]
    pub derived_columns: BTreeMap<String, String>,
}

/// `[[routes]]`: some topics into a table of their own. Compression, table
/// properties, metadata columns and row-group size come from `[table]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// The topics this route takes.
    #[serde(default)]
    pub topics: Vec<String>,
    /// Or a regular expression for them.
    pub topic_pattern: Option<String>,
    /// The table; `{topic}` in it makes one table per topic.
    pub uri: String,
    /// Schema file (required for `json`).
    pub schema_file: Option<PathBuf>,
    /// Partition columns, used when the table is created.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// Row filter (DataFusion SQL).
    pub filter: Option<String>,
    /// Derived columns (DataFusion SQL).
    #[serde(default)]
    pub derived_columns: BTreeMap<String, String>,
    /// Flush policy for this route's tables (unset keys: `[flush]`).
    #[serde(default)]
    pub flush: RawFlush,
}

/// `[storage]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    /// S3 endpoint URL for S3-compatible servers; AWS when absent.
    pub endpoint: Option<String>,
    /// AWS region.
    pub region: Option<String>,
    /// Allow `http://` endpoints.
    #[serde(default)]
    pub allow_http: bool,
    /// Use path-style addressing (`endpoint/bucket/key`), needed by most
    /// S3-compatible servers.
    #[serde(default)]
    pub path_style: bool,
    /// Static access key; when absent the standard AWS credential chain is used.
    pub access_key_id: Option<String>,
    /// Static secret key (use `${AWS_SECRET_ACCESS_KEY}` rather than a literal).
    pub secret_access_key: Option<Secret>,
    /// Session token for temporary credentials.
    pub session_token: Option<Secret>,
    /// Server-side encryption of every object written: `sse-s3` (AES256) or
    /// `sse-kms`. Bucket policies that require encryption headers need this.
    pub encryption: Option<String>,
    /// The KMS key (id or ARN) for `sse-kms`; the bucket's default key when absent.
    pub kms_key_id: Option<String>,
    /// Further object-store options passed through to delta-rs verbatim.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

/// `[flush]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlush {
    /// Commit once this many rows are buffered.
    pub max_rows: Option<u64>,
    /// Commit once the Parquet written so far reaches this size (e.g. `"128 MiB"`).
    pub max_bytes: Option<ByteSize>,
    /// Commit at most this long after the first buffered record (e.g. `"30s"`),
    /// whether or not more records arrive.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
}

/// `[commit]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommit {
    /// Delta conflict retries for concurrent, non-overlapping appends.
    pub max_conflict_retries: Option<usize>,
    /// Longest wait between retries of a failing commit (e.g. `"30s"`).
    #[serde(default, with = "humantime_serde")]
    pub max_backoff: Option<Duration>,
}

/// `[decode]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDecode {
    /// Record value format: `json` (default), or `avro` / `protobuf` / `json_schema`
    /// (Confluent wire format, schemas from the registry).
    pub format: Option<String>,
    /// What to do with a record that cannot be decoded.
    #[serde(default)]
    pub on_error: OnError,
    /// What to do with records whose producer schema cannot be written to the
    /// table (a column's type changed): `skip` sends them to dead letters, `fail`
    /// stops the pipeline.
    #[serde(default)]
    pub on_incompatible: OnError,
    /// Registry subject whose latest schema creates the table; `{topic}` is
    /// replaced by the (first) topic. Default `{topic}-value`.
    pub subject: Option<String>,
    /// Records with a larger value are rejected (to dead letters) instead of
    /// decoded, so one oversized record cannot blow the memory budget (default 16 MiB).
    pub max_record_bytes: Option<ByteSize>,
}

/// `[schema_registry]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRegistry {
    /// Base URL, or several separated by commas (tried in order).
    pub url: String,
    /// Basic-auth user (Confluent Cloud: API key).
    pub username: Option<String>,
    /// Basic-auth password (Confluent Cloud: API secret).
    pub password: Option<Secret>,
    /// Bearer token, instead of basic auth.
    pub bearer_token: Option<Secret>,
    /// PEM file with an extra CA for the registry's TLS, relative to the config file.
    pub ca_file: Option<PathBuf>,
    /// Per-request timeout (default 30s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

// ---------------------------------------------------------------------------
// Validated form.
// ---------------------------------------------------------------------------

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// See [`RawConfig::app_id`].
    pub app_id: String,
    /// Kafka source.
    pub kafka: KafkaConfig,
    /// Destination table (the default route: topics no `[[routes]]` entry takes).
    pub table: TableConfig,
    /// `[[routes]]`, in order; see [`Config::all_routes`].
    pub routes: Vec<Route>,
    /// Object-store options handed to delta-rs.
    pub storage: StorageConfig,
    /// Flush policy.
    pub flush: FlushPolicy,
    /// Commit behaviour.
    pub commit: CommitConfig,
    /// Decoding.
    pub decode: DecodeConfig,
    /// The dead-letter table, when rejected records are to be kept.
    pub dead_letters: Option<Url>,
    /// Where to serve metrics and health probes.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Log filter, when the file sets one.
    pub log_level: Option<String>,
    /// Log as JSON.
    pub log_json: bool,
}

/// Which topics a route takes.
#[derive(Debug, Clone)]
pub enum TopicMatch {
    /// These topics.
    Topics(Vec<String>),
    /// Topics matching this (anchored) expression.
    Pattern(regex::Regex),
    /// Every topic (the `[table]` route).
    Any,
}

impl TopicMatch {
    /// Whether `topic` belongs to the route.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicMatch::Topics(t) => t.iter().any(|x| x == topic),
            TopicMatch::Pattern(p) => p.is_match(topic),
            TopicMatch::Any => true,
        }
    }
}

/// Where a set of topics is written.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its topics.
    pub topics: TopicMatch,
    /// Its table (with `uri_template` when there is one table per topic).
    pub table: TableConfig,
    /// Its flush policy.
    pub flush: FlushPolicy,
}

impl Route {
    /// The table configuration for records of `topic`.
    pub fn table_for(&self, topic: &str) -> Result<TableConfig, TableUriError> {
        let mut t = self.table.clone();
        if let Some(template) = &self.table.uri_template {
            t.uri = parse_table_uri(&template.replace("{topic}", topic))?;
        }
        Ok(t)
    }
}

impl RawConfig {
    /// Parse TOML text. `${NAME}` in string values is replaced by `env(NAME)`
    /// (comments and keys are left alone); `$${` is a literal `${`.
    pub fn parse(
        text: &str,
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let parse_err = |message: String| ConfigError::Parse {
            path: path.map(Path::to_path_buf),
            message,
        };
        let mut value: toml::Table = toml::from_str(text).map_err(|e| parse_err(e.to_string()))?;
        for (_, v) in value.iter_mut() {
            expand_value(v, env)?;
        }
        toml::Value::Table(value)
            .try_into()
            .map_err(|e: toml::de::Error| parse_err(e.to_string()))
    }

    /// Read and parse a file. Relative paths inside it resolve against its directory.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut raw = Self::parse(&text, Some(path), env)?;
        if let Some(dir) = path.parent() {
            for file in [
                raw.table.schema_file.as_mut(),
                raw.schema_registry
                    .as_mut()
                    .and_then(|r| r.ca_file.as_mut()),
            ]
            .into_iter()
            .flatten()
            {
                if file.is_relative() {
                    *file = dir.join(&*file);
                }
            }
        }
        Ok(raw)
    }

    /// Check every value, read the schema file, and resolve defaults.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let app_id = self.app_id.trim().to_owned();
        if app_id.is_empty() {
            return Err(ConfigError::invalid("app_id", "must not be empty"));
        }
        if !app_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(ConfigError::invalid(
                "app_id",
                format!("`{app_id}` may only contain letters, digits, '-', '_' and '.'"),
            ));
        }
        let kafka = validate_kafka(self.kafka, &app_id)?;
        let base_table = self.table.clone();
        let table = validate_table(self.table)?;
        let storage = validate_storage(self.storage, &table.uri)?;
        let defaults = FlushPolicy::default();
        let flush = FlushPolicy {
            max_rows: self.flush.max_rows.unwrap_or(defaults.max_rows),
            max_bytes: self
                .flush
                .max_bytes
                .map(|b| b.as_u64())
                .unwrap_or(defaults.max_bytes),
            max_age: self.flush.max_age.unwrap_or(defaults.max_age),
        };
        if flush.max_rows == 0 {
            return Err(ConfigError::invalid("flush.max_rows", "must be at least 1"));
        }
        if flush.max_bytes < 1024 {
            return Err(ConfigError::invalid(
                "flush.max_bytes",
                "must be at least 1 KiB",
            ));
        }
        if flush.max_age < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "flush.max_age",
                "must be at least 100ms; a commit per few records floods the Delta log",
            ));
        }
        let commit = CommitConfig {
            max_conflict_retries: self.commit.max_conflict_retries.unwrap_or(100),
            max_backoff: self.commit.max_backoff.unwrap_or(Duration::from_secs(30)),
        };
        if commit.max_backoff < Duration::from_millis(10) {
            return Err(ConfigError::invalid(
                "commit.max_backoff",
                "must be at least 10ms",
            ));
        }
        let decode = validate_decode(self.decode, self.schema_registry, &kafka, &table)?;
        let mut routes = Vec::with_capacity(self.routes.len() + 1);
        for (i, r) in self.routes.into_iter().enumerate() {
            routes.push(validate_route(i, r, &base_table, &flush, &kafka, &decode)?);
        }

        let metrics_listen = self
            .observability
            .listen
            .map(|a| {
                a.parse::<std::net::SocketAddr>().map_err(|e| {
                    ConfigError::invalid(
                        "observability.listen",
                        format!("`{a}` is not IP:PORT: {e}"),
                    )
                })
            })
            .transpose()?;
        let log_json = match self.log.format.as_deref().unwrap_or("text") {
            "text" => false,
            "json" => true,
            other => {
                return Err(ConfigError::invalid(
                    "log.format",
                    format!("`{other}`: use `text` or `json`"),
                ));
            }
        };
        Ok(Config {
            app_id,
            kafka,
            table,
            storage,
            flush,
            commit,
            decode,
            routes,
            dead_letters: self
                .dead_letters
                .map(|d| {
                    parse_table_uri(&d.uri)
                        .map_err(|e| ConfigError::invalid("dead_letters.uri", e.to_string()))
                })
                .transpose()?,
            metrics_listen,
            log_level: self.log.level,
            log_json,
        })
    }
}

impl Config {
    /// Every route: `[[routes]]` in order, then `[table]` for the other topics.
    pub fn all_routes(&self) -> Vec<Route> {
        let mut all = self.routes.clone();
        all.push(Route {
            topics: TopicMatch::Any,
            table: self.table.clone(),
            flush: self.flush,
        });
        all
    }
}

/// librdkafka properties tributary sets itself; overriding them would break the
/// exactly-once protocol.
const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
];

fn validate_kafka(raw: RawKafka, app_id: &str) -> Result<KafkaConfig, ConfigError> {
    if raw.brokers.trim().is_empty() {
        return Err(ConfigError::invalid(
            "kafka.brokers",
            "must list at least one host:port",
        ));
    }
    for broker in raw.brokers.split(',') {
        let broker = broker.trim();
        let port_ok = broker
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(ConfigError::invalid(
                "kafka.brokers",
                format!("`{broker}` is not host:port"),
            ));
        }
    }
    let subscription = match (raw.topics.is_empty(), raw.topic_pattern) {
        (false, None) => {
            if let Some(bad) = raw.topics.iter().find(|t| !valid_topic_name(t)) {
                return Err(ConfigError::invalid(
                    "kafka.topics",
                    format!("`{bad}` is not a valid Kafka topic name"),
                ));
            }
            Subscription::Topics(raw.topics)
        }
        (true, Some(pattern)) => {
            let anchored = if pattern.starts_with('^') {
                pattern
            } else {
                format!("^{pattern}")
            };
            Subscription::Pattern(anchored)
        }
        (true, None) => {
            return Err(ConfigError::invalid(
                "kafka.topics",
                "set `topics = [...]` or `topic_pattern = \"...\"`",
            ));
        }
        (false, Some(_)) => {
            return Err(ConfigError::invalid(
                "kafka.topic_pattern",
                "set either `topics` or `topic_pattern`, not both",
            ));
        }
    };
    if let Some(key) = raw
        .properties
        .keys()
        .find(|k| RESERVED_KAFKA_PROPERTIES.contains(&k.as_str()))
    {
        return Err(ConfigError::invalid(
            "kafka.properties",
            format!(
                "`{key}` is managed by tributary; use the [kafka] keys (brokers, group_id, auto_offset_reset) instead"
            ),
        ));
    }
    let group_id = raw.group_id.unwrap_or_else(|| app_id.to_owned());
    if group_id.trim().is_empty() {
        return Err(ConfigError::invalid("kafka.group_id", "must not be empty"));
    }
    let max_chunk_records = raw.max_chunk_records.unwrap_or(4096);
    if max_chunk_records == 0 {
        return Err(ConfigError::invalid(
            "kafka.max_chunk_records",
            "must be at least 1",
        ));
    }
    let channel_capacity = raw.channel_capacity.unwrap_or(16);
    if channel_capacity == 0 {
        return Err(ConfigError::invalid(
            "kafka.channel_capacity",
            "must be at least 1",
        ));
    }
    Ok(KafkaConfig {
        brokers: raw.brokers,
        group_id,
        subscription,
        auto_offset_reset: raw.auto_offset_reset,
        properties: raw
            .properties
            .into_iter()
            .map(|(k, v)| (k, Secret::new(v)))
            .collect(),
        max_chunk_records,
        channel_capacity,
    })
}

fn valid_topic_name(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn validate_decode(
    raw: RawDecode,
    registry: Option<RawRegistry>,
    kafka: &KafkaConfig,
    table: &TableConfig,
) -> Result<DecodeConfig, ConfigError> {
    let format = match raw.format.as_deref().unwrap_or("json") {
        "json" => Format::Json,
        "avro" => Format::Avro,
        "json_schema" => Format::JsonSchema,
        "protobuf" => Format::Protobuf,
        other => {
            return Err(ConfigError::invalid(
                "decode.format",
                format!(
                    "unsupported format `{other}`: use `json`, `avro`, `protobuf` or `json_schema`"
                ),
            ));
        }
    };
    let subject = raw.subject.unwrap_or_else(|| "{topic}-value".to_owned());
    let registry = match registry {
        None => None,
        Some(r) => {
            let urls: Vec<String> = r
                .url
                .split(',')
                .map(|u| u.trim().trim_end_matches('/').to_owned())
                .filter(|u| !u.is_empty())
                .collect();
            if urls.is_empty() {
                return Err(ConfigError::invalid(
                    "schema_registry.url",
                    "must not be empty",
                ));
            }
            for u in &urls {
                match Url::parse(u) {
                    Ok(p) if matches!(p.scheme(), "http" | "https") => {}
                    _ => {
                        return Err(ConfigError::invalid(
                            "schema_registry.url",
                            format!("`{u}` is not an http(s) URL"),
                        ));
                    }
                }
            }
            if r.password.is_some() && r.username.is_none() {
                return Err(ConfigError::invalid(
                    "schema_registry.password",
                    "is set without schema_registry.username",
                ));
            }
            if r.bearer_token.is_some() && r.username.is_some() {
                return Err(ConfigError::invalid(
                    "schema_registry.bearer_token",
                    "set either bearer_token or username/password, not both",
                ));
            }
            if let Some(ca) = &r.ca_file
                && !ca.is_file()
            {
                return Err(ConfigError::invalid(
                    "schema_registry.ca_file",
                    format!("{} does not exist", ca.display()),
                ));
            }
            Some(crate::decode::registry::RegistryConfig {
                urls,
                username: r.username,
                password: r.password,
                bearer_token: r.bearer_token,
                ca_file: r.ca_file,
                timeout: r.timeout.unwrap_or(Duration::from_secs(30)),
            })
        }
    };
    match format {
        Format::Json if table.schema.is_none() => {
            return Err(ConfigError::invalid(
                "table.schema_file",
                "is required for decode.format = \"json\"",
            ));
        }
        Format::Avro | Format::JsonSchema | Format::Protobuf if registry.is_none() => {
            return Err(ConfigError::invalid(
                "schema_registry",
                "registry formats (avro, protobuf, json_schema) need a [schema_registry] section \
                 with its url",
            ));
        }
        _ => {}
    }
    if format != Format::Json
        && table.schema.is_none()
        && subject.contains("{topic}")
        && matches!(kafka.subscription, Subscription::Pattern(_))
    {
        return Err(ConfigError::invalid(
            "decode.subject",
            "`{topic}` cannot be resolved for a topic_pattern subscription: set a fixed \
             subject or table.schema_file",
        ));
    }
    let max_record_bytes = raw
        .max_record_bytes
        .map_or(16 * 1024 * 1024, |b| b.as_u64());
    if max_record_bytes < 1024 {
        return Err(ConfigError::invalid(
            "decode.max_record_bytes",
            "must be at least 1 KiB",
        ));
    }
    Ok(DecodeConfig {
        format,
        on_error: raw.on_error,
        on_incompatible: raw.on_incompatible,
        subject,
        registry,
        max_record_bytes,
    })
}

fn validate_route(
    i: usize,
    r: RawRoute,
    base: &RawTable,
    flush: &FlushPolicy,
    kafka: &KafkaConfig,
    decode: &DecodeConfig,
) -> Result<Route, ConfigError> {
    let invalid = |m: String| ConfigError::invalid("routes", format!("route {}: {m}", i + 1));
    let topics = match (r.topics.is_empty(), &r.topic_pattern) {
        (false, None) => {
            if let Subscription::Topics(subscribed) = &kafka.subscription
                && let Some(t) = r.topics.iter().find(|t| !subscribed.contains(t))
            {
                return Err(invalid(format!("topic `{t}` is not in kafka.topics")));
            }
            TopicMatch::Topics(r.topics.clone())
        }
        (true, Some(p)) => {
            let anchored = if p.starts_with('^') {
                p.clone()
            } else {
                format!("^{p}")
            };
            TopicMatch::Pattern(
                regex::Regex::new(&anchored)
                    .map_err(|e| invalid(format!("topic_pattern `{p}`: {e}")))?,
            )
        }
        _ => return Err(invalid("set either `topics` or `topic_pattern`".into())),
    };
    let table = validate_table(RawTable {
        uri: r.uri,
        schema_file: r.schema_file,
        partition_by: r.partition_by,
        compression: base.compression.clone(),
        properties: base.properties.clone(),
        metadata_columns: base.metadata_columns.clone(),
        row_group_rows: base.row_group_rows,
        filter: r.filter,
        derived_columns: r.derived_columns,
    })
    .map_err(|e| invalid(e.to_string()))?;
    if decode.format == Format::Json && table.schema.is_none() {
        return Err(invalid(
            "schema_file is required for decode.format = \"json\"".into(),
        ));
    }
    let flush = FlushPolicy {
        max_rows: r.flush.max_rows.unwrap_or(flush.max_rows),
        max_bytes: r.flush.max_bytes.map_or(flush.max_bytes, |b| b.as_u64()),
        max_age: r.flush.max_age.unwrap_or(flush.max_age),
    };
    if flush.max_rows == 0 || flush.max_bytes < 1024 || flush.max_age < Duration::from_millis(100) {
        return Err(invalid(
            "flush: max_rows >= 1, max_bytes >= 1 KiB, max_age >= 100ms".into(),
        ));
    }
    Ok(Route {
        topics,
        table,
        flush,
    })
}

fn validate_table(raw: RawTable) -> Result<TableConfig, ConfigError> {
    let uri_template = raw.uri.contains("{topic}").then(|| raw.uri.clone());
    let uri = parse_table_uri(&raw.uri.replace("{topic}", "topic"))
        .map_err(|e| ConfigError::invalid("table.uri", e.to_string()))?;
    let schema = match &raw.schema_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Schema {
                path: path.clone(),
                message: e.to_string(),
            })?;
            Some(
                crate::schema::parse_schema_json(&text).map_err(|e| ConfigError::Schema {
                    path: path.clone(),
                    message: e.to_string(),
                })?,
            )
        }
    };
    let compression = raw
        .compression
        .as_deref()
        .unwrap_or("snappy")
        .parse::<Compression>()
        .map_err(|m| ConfigError::invalid("table.compression", m))?;
    let metadata_columns = raw.metadata_columns;
    let mut seen = std::collections::HashSet::new();
    for name in metadata_columns.names() {
        if name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "table.metadata_columns",
                "column names must not be empty",
            ));
        }
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(ConfigError::invalid(
                "table.metadata_columns",
                format!("column `{name}` is named twice"),
            ));
        }
        if schema
            .iter()
            .flat_map(|s| s.fields())
            .any(|f| f.name().eq_ignore_ascii_case(name))
        {
            return Err(ConfigError::invalid(
                "table.metadata_columns",
                format!("`{name}` is already a field of the record schema; pick another name"),
            ));
        }
    }
    for (name, sql) in &raw.derived_columns {
        if name.trim().is_empty() || sql.trim().is_empty() {
            return Err(ConfigError::invalid(
                "table.derived_columns",
                "names and expressions must not be empty",
            ));
        }
        let taken = metadata_columns
            .names()
            .any(|n| n.eq_ignore_ascii_case(name))
            || schema
                .iter()
                .flat_map(|s| s.fields())
                .any(|f| f.name().eq_ignore_ascii_case(name));
        if taken {
            return Err(ConfigError::invalid(
                "table.derived_columns",
                format!("`{name}` is already a record field or metadata column; pick another name"),
            ));
        }
    }
    for col in &raw.partition_by {
        let in_schema = schema
            .as_ref()
            .is_none_or(|s| s.fields().any(|f| f.name() == col));
        let in_meta = metadata_columns.names().any(|n| n == col);
        let derived = raw.derived_columns.contains_key(col);
        if !in_schema && !in_meta && !derived {
            return Err(ConfigError::invalid(
                "table.partition_by",
                format!(
                    "`{col}` is not a column of the schema, a metadata column or a derived column"
                ),
            ));
        }
    }
    let row_group_rows = raw.row_group_rows.unwrap_or(128 * 1024);
    if row_group_rows < 1024 {
        return Err(ConfigError::invalid(
            "table.row_group_rows",
            "must be at least 1024",
        ));
    }
    Ok(TableConfig {
        uri,
        uri_template,
        schema,
        schema_path: raw.schema_file,
        partition_by: raw.partition_by,
        compression,
        properties: raw.properties,
        metadata_columns,
        row_group_rows,
        transform: crate::decode::transform::TransformSpec {
            columns: raw.derived_columns.into_iter().collect(),
            filter: raw.filter.filter(|f| !f.trim().is_empty()),
        },
    })
}

fn validate_storage(raw: RawStorage, uri: &Url) -> Result<StorageConfig, ConfigError> {
    let mut options: BTreeMap<String, Secret> = BTreeMap::new();
    let is_s3 = matches!(uri.scheme(), "s3" | "s3a");
    let mut set = |k: &str, v: String| {
        options.insert(k.to_owned(), Secret::new(v));
    };
    if let Some(endpoint) = raw.endpoint {
        let parsed = Url::parse(&endpoint)
            .map_err(|e| ConfigError::invalid("storage.endpoint", format!("`{endpoint}`: {e}")))?;
        if parsed.scheme() == "http" && !raw.allow_http {
            return Err(ConfigError::invalid(
                "storage.endpoint",
                format!("`{endpoint}` is plain http: set `allow_http = true` to permit it"),
            ));
        }
        set("aws_endpoint_url", endpoint);
    }
    if let Some(region) = raw.region {
        set("aws_region", region);
    }
    if raw.allow_http {
        set("aws_allow_http", "true".into());
    }
    if raw.path_style {
        set("aws_virtual_hosted_style_request", "false".into());
    }
    match (raw.access_key_id, raw.secret_access_key) {
        (Some(id), Some(secret)) => {
            set("aws_access_key_id", id);
            set("aws_secret_access_key", secret.expose().to_owned());
        }
        (None, None) => {}
        _ => {
            return Err(ConfigError::invalid(
                "storage.access_key_id",
                "set both access_key_id and secret_access_key, or neither to use the AWS credential chain",
            ));
        }
    }
    if let Some(token) = raw.session_token {
        set("aws_session_token", token.expose().to_owned());
    }
    match (raw.encryption.as_deref(), raw.kms_key_id) {
        (None, None) => {}
        (Some("sse-s3"), None) => set("aws_server_side_encryption", "AES256".into()),
        (Some("sse-kms"), key) => {
            set("aws_server_side_encryption", "aws:kms".into());
            if let Some(key) = key {
                set("aws_sse_kms_key_id", key);
            }
        }
        (Some("sse-s3") | None, Some(_)) => {
            return Err(ConfigError::invalid(
                "storage.kms_key_id",
                "needs encryption = \"sse-kms\"",
            ));
        }
        (Some(other), _) => {
            return Err(ConfigError::invalid(
                "storage.encryption",
                format!("`{other}`: use `sse-s3` or `sse-kms`"),
            ));
        }
    }
    if is_s3 {
        // Conditional put (If-None-Match) is what makes concurrent writers safe
        // without a lock service; refuse configs that would switch it off.
        for (k, v) in &raw.options {
            check_commit_safety("storage.options", k, v)?;
        }
        set("aws_conditional_put", "etag".into());
    }
    for (k, v) in raw.options {
        options.insert(k, Secret::new(v));
    }
    Ok(StorageConfig { options })
}

/// Refuse an S3 option that would switch off what makes concurrent commits safe:
/// conditional put (`If-None-Match`) must stay on and no lock service is used. The
/// config file's `[storage.options]` and `--storage-option` both go through here.
pub fn check_commit_safety(
    source: &'static str,
    key: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let k = key.trim().to_ascii_lowercase();
    if matches!(k.as_str(), "aws_conditional_put" | "conditional_put") && value.trim() != "etag" {
        return Err(ConfigError::invalid(
            source,
            format!("{key} must stay `etag`: concurrent writers rely on S3 conditional put"),
        ));
    }
    if k == "aws_s3_locking_provider" {
        return Err(ConfigError::invalid(
            source,
            "a locking provider is not needed: S3 conditional put orders commits",
        ));
    }
    Ok(())
}

fn expand_value(
    v: &mut toml::Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match v {
        toml::Value::String(s) => *s = expand_env(s, env)?,
        toml::Value::Array(items) => {
            for item in items {
                expand_value(item, env)?;
            }
        }
        toml::Value::Table(t) => {
            for (_, item) in t.iter_mut() {
                expand_value(item, env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expand `${NAME}` references in one string. `$${` is a literal `${`.
fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail.find('}').ok_or_else(|| ConfigError::Parse {
                path: None,
                message: format!("unterminated `${{` in the value `{text}`"),
            })?;
            let name = &tail[..end];
            let value = env(name).ok_or_else(|| ConfigError::MissingEnv {
                name: name.to_owned(),
            })?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    const MINIMAL: &str = r#"
app_id = "orders"
[kafka]
brokers = "127.0.0.1:9092"
topics = ["orders"]
[table]
uri = "s3://bucket/orders"
schema_file = "SCHEMA"
"#;

    fn schema_file() -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            f.path(),
            r#"{"type":"struct","fields":[{"name":"id","type":"long","nullable":false,"metadata":{}}]}"#,
        )
        .unwrap();
        f
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let f = schema_file();
        let text = text.replace("SCHEMA", f.path().to_str().unwrap());
        RawConfig::parse(&text, None, &no_env)?.validate()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.kafka.group_id, "orders");
        assert_eq!(c.flush, FlushPolicy::default());
        assert_eq!(c.table.compression, Compression::Snappy);
        assert_eq!(
            c.storage
                .options
                .get("aws_conditional_put")
                .unwrap()
                .expose(),
            "etag"
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = parse(&MINIMAL.replace("[table]", "[table]\nurl = \"x\"")).unwrap_err();
        assert!(err.to_string().contains("unknown field `url`"), "{err}");
    }

    #[test]
    fn env_references_expand_and_missing_ones_fail() {
        let env = |k: &str| match k {
            "BROKERS" => Some("10.0.0.1:9093".to_owned()),
            "PW" => Some(r#"a"b\c ${X}"#.to_owned()),
            _ => None,
        };
        let f = schema_file();
        let text = format!(
            "{}\n[kafka.properties]\n\"sasl.password\" = \"${{PW}}\" # not ${{IN_COMMENT}}\n",
            MINIMAL.replace("127.0.0.1:9092", "${BROKERS}")
        )
        .replace("SCHEMA", f.path().to_str().unwrap());
        let c = RawConfig::parse(&text, None, &env)
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(c.kafka.brokers, "10.0.0.1:9093");
        // Values are substituted verbatim (no re-parsing), comments are not expanded.
        assert_eq!(
            c.kafka.properties["sasl.password"].expose(),
            r#"a"b\c ${X}"#
        );
        let err = RawConfig::parse(&text, None, &no_env).unwrap_err();
        assert!(matches!(err, ConfigError::MissingEnv { ref name } if name == "BROKERS"));
        assert_eq!(expand_env("a $${b} $c", &no_env).unwrap(), "a ${b} $c");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            (MINIMAL.replace("127.0.0.1:9092", "nohost"), "kafka.brokers"),
            (MINIMAL.replace("topics = [\"orders\"]", ""), "kafka.topics"),
            (
                MINIMAL.replace("s3://bucket/orders", "ftp://x/y"),
                "table.uri",
            ),
            (
                MINIMAL.replace("s3://bucket/orders", "s3:///orders"),
                "table.uri",
            ),
            (
                format!("{MINIMAL}\n[kafka.properties]\n\"group.id\" = \"x\""),
                "kafka.properties",
            ),
            (
                format!("{MINIMAL}compression = \"zstd(99)\""),
                "table.compression",
            ),
            (
                format!("{MINIMAL}[flush]\nmax_age = \"1ms\""),
                "flush.max_age",
            ),
            (
                format!("{MINIMAL}[storage]\nendpoint = \"http://127.0.0.1:1\""),
                "storage.endpoint",
            ),
        ];
        for (text, key) in cases {
            let err = parse(&text).unwrap_err();
            assert!(
                err.to_string().contains(key),
                "expected error naming {key}, got: {err}"
            );
        }
    }

    #[test]
    fn compression_parses() {
        assert_eq!("zstd(1)".parse::<Compression>(), Ok(Compression::Zstd(1)));
        assert_eq!("ZSTD".parse::<Compression>(), Ok(Compression::Zstd(3)));
        assert!("gzip".parse::<Compression>().is_err());
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config/events.toml");
        let env = |k: &str| (k == "KAFKA_BROKERS").then(|| "127.0.0.1:9092".to_owned());
        let c = RawConfig::load(&path, &env).unwrap().validate().unwrap();
        assert_eq!(c.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(c.table.compression, Compression::Zstd(1));
        assert_eq!(c.flush.max_bytes, 128 * 1024 * 1024);
        assert_eq!(c.table.metadata_columns.names().count(), 6);
        assert_eq!(
            c.dead_letters.unwrap().as_str(),
            "s3://my-bucket/tables/_dead_letters"
        );
    }

    #[test]
    fn shipped_avro_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/config/orders-avro.toml");
        let env = |k: &str| match k {
            "KAFKA_BROKERS" => Some("127.0.0.1:9092".to_owned()),
            "SCHEMA_REGISTRY_URL" => Some("http://127.0.0.1:8081".to_owned()),
            _ => None,
        };
        let c = RawConfig::load(&path, &env).unwrap().validate().unwrap();
        assert_eq!(c.decode.format, Format::Avro);
        assert!(c.table.schema.is_none());
        assert_eq!(c.decode.subject_for("orders"), "orders-value");
        let r = c.decode.registry.unwrap();
        assert_eq!(r.urls, ["http://127.0.0.1:8081"]);
        assert_eq!(c.table.partition_by, ["day"]);
        assert_eq!(
            c.table.transform.columns,
            [("day".to_owned(), "CAST(ts_ms AS DATE)".to_owned())]
        );
    }

    #[test]
    fn registry_formats_say_what_is_missing() {
        let base = "app_id = \"a\"\n[kafka]\nbrokers = \"h:1\"\ntopics = [\"t\"]\n[table]\nuri = \"s3://b/t\"\n";
        let err = |text: &str| {
            RawConfig::parse(text, None, &|_| None)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        assert!(err(base).contains("table.schema_file"), "{}", err(base));
        let avro = format!("{base}[decode]\nformat = \"avro\"\n");
        assert!(err(&avro).contains("[schema_registry]"), "{}", err(&avro));
        let bad_url = format!("{avro}[schema_registry]\nurl = \"ftp://x\"\n");
        assert!(
            err(&bad_url).contains("schema_registry.url"),
            "{}",
            err(&bad_url)
        );
        let pattern = avro.replace("topics = [\"t\"]", "topic_pattern = \"t.*\"")
            + "[schema_registry]\nurl = \"http://r:8081\"\n";
        assert!(
            err(&pattern).contains("decode.subject"),
            "{}",
            err(&pattern)
        );
        let protobuf = format!("{base}[decode]\nformat = \"xml\"\n");
        assert!(
            err(&protobuf).contains("decode.format"),
            "{}",
            err(&protobuf)
        );
    }

    #[test]
    fn routes_are_validated_and_templates_resolve_per_topic() {
        let base = "app_id = \"a\"\n[kafka]\nbrokers = \"h:1\"\ntopics = [\"orders\", \"payments\"]\n[table]\nuri = \"s3://b/t/{topic}\"\nschema_file = \"SCHEMA\"\n";
        let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/demo_events.json");
        let base = base.replace("SCHEMA", &schema.display().to_string());
        let parse = |text: &str| RawConfig::parse(text, None, &|_| None).unwrap().validate();
        let c = parse(&base).unwrap();
        let default = &c.all_routes()[0];
        assert_eq!(
            default.table_for("orders").unwrap().uri.as_str(),
            "s3://b/t/orders"
        );
        let route = format!(
            "{base}[[routes]]\ntopics = [\"payments\"]\nuri = \"s3://b/pay\"\nschema_file = \"{}\"\n[routes.flush]\nmax_rows = 10\n",
            schema.display()
        );
        let c = parse(&route).unwrap();
        let routes = c.all_routes();
        assert_eq!(routes.len(), 2);
        assert!(routes[0].topics.matches("payments") && !routes[0].topics.matches("orders"));
        assert_eq!(routes[0].flush.max_rows, 10);
        assert_eq!(routes[0].flush.max_age, c.flush.max_age);
        let unsubscribed =
            route.replace("topics = [\"payments\"]\nuri", "topics = [\"other\"]\nuri");
        let err = parse(&unsubscribed).unwrap_err().to_string();
        assert!(err.contains("route 1") && err.contains("`other`"), "{err}");
        let no_schema = route.replace(
            &format!(
                "uri = \"s3://b/pay\"\nschema_file = \"{}\"",
                schema.display()
            ),
            "uri = \"s3://b/pay\"",
        );
        let err = parse(&no_schema).unwrap_err().to_string();
        assert!(err.contains("schema_file"), "{err}");
    }

    #[test]
    fn storage_encryption_maps_to_object_store_options() {
        let base = "app_id = \"a\"\n[kafka]\nbrokers = \"h:1\"\ntopics = [\"t\"]\n[table]\nuri = \"s3://b/t\"\nschema_file = \"SCHEMA\"\n[storage]\n";
        let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/demo_events.json");
        let base = base.replace("SCHEMA", &schema.display().to_string());
        let parse = |extra: &str| {
            RawConfig::parse(&format!("{base}{extra}"), None, &|_| None)
                .unwrap()
                .validate()
        };
        let opt = |c: &Config, k: &str| c.storage.options.get(k).map(|v| v.expose().to_owned());
        let c = parse("encryption = \"sse-s3\"\n").unwrap();
        assert_eq!(
            opt(&c, "aws_server_side_encryption").as_deref(),
            Some("AES256")
        );
        let c = parse("encryption = \"sse-kms\"\nkms_key_id = \"k1\"\n").unwrap();
        assert_eq!(
            opt(&c, "aws_server_side_encryption").as_deref(),
            Some("aws:kms")
        );
        assert_eq!(opt(&c, "aws_sse_kms_key_id").as_deref(), Some("k1"));
        let err = parse("kms_key_id = \"k1\"\n").unwrap_err().to_string();
        assert!(err.contains("storage.kms_key_id"), "{err}");
        let err = parse("encryption = \"rot13\"\n").unwrap_err().to_string();
        assert!(err.contains("storage.encryption"), "{err}");
    }

    #[test]
    fn kubernetes_configmap_config_is_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let yaml = std::fs::read_to_string(root.join("deploy/k8s/tributary.yaml")).unwrap();
        let block = yaml
            .split("tributary.toml: |\n")
            .nth(1)
            .and_then(|rest| rest.split("\n---").next())
            .unwrap();
        let toml: String = block
            .lines()
            .map(|l| l.strip_prefix("    ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
            .replace(
                "/etc/tributary/schemas/",
                &format!("{}/schemas/", root.display()),
            );
        let env = |k: &str| Some(format!("value-of-{k}:9093"));
        let c = RawConfig::parse(&toml, None, &env)
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(c.metrics_listen.unwrap().port(), 9898);
        assert!(c.log_json);
        assert_eq!(
            c.kafka.properties["sasl.password"].expose(),
            "value-of-KAFKA_PASSWORD:9093"
        );
    }

    #[test]
    fn local_paths_become_file_urls() {
        let u = parse_table_uri("/tmp/some/table").unwrap();
        assert_eq!(u.as_str(), "file:///tmp/some/table/");
    }
}
