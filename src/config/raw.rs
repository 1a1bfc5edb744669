//! The configuration file as written: every section, unknown keys rejected.

use super::*;

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
    pub format: Option<RawLogFormat>,
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
    /// `append` (default) or `upsert` (the table holds the latest change per key).
    pub mode: Option<RawMode>,
    /// Upsert: the key columns.
    #[serde(default)]
    pub key: Vec<String>,
    /// Upsert: a column ordering a key's changes.
    pub order_by: Option<String>,
    /// Upsert: `debezium` when records are Debezium change events,
    /// `debezium-flattened` when `ExtractNewRecordState` flattened them.
    pub envelope: Option<RawEnvelope>,
    /// Upsert with `order_by`: how long deleted keys' order values are kept
    /// (e.g. `"7d"`; every table's, routes' too).
    #[serde(default, with = "humantime_serde")]
    pub delete_horizon: Option<std::time::Duration>,
    /// Upsert: `copy-on-write` (default: a window's MERGE rewrites the files
    /// holding its keys) or `merge-on-read` (deletion vectors mark the old
    /// rows; every table's, routes' too).
    pub upsert_strategy: Option<RawStrategy>,
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
    /// `append` (default) or `upsert`, for this route's tables.
    pub mode: Option<RawMode>,
    /// Upsert: the key columns.
    #[serde(default)]
    pub key: Vec<String>,
    /// Upsert: a column ordering a key's changes.
    pub order_by: Option<String>,
    /// Upsert: `debezium` when records are Debezium change events,
    /// `debezium-flattened` when `ExtractNewRecordState` flattened them.
    pub envelope: Option<RawEnvelope>,
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
    /// `[flush]` only (not a route's): the memory all tables' windows may hold
    /// together (estimated, see `window::budget`) before the largest are committed
    /// early (e.g. `"512 MiB"`).
    pub memory_budget: Option<ByteSize>,
}

/// `mode`: how a table takes its records. A value that is none of these is
/// kept, so that validation names the key it was given for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawMode {
    /// Every record is a new row.
    Append,
    /// The table holds the latest change per key.
    Upsert,
    /// Anything else (refused by validation, naming the key).
    #[serde(untagged)]
    Other(String),
}

/// `upsert_strategy`: how an upsert window changes the table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawStrategy {
    /// One MERGE per window, rewriting the files that hold its keys.
    CopyOnWrite,
    /// Deletion vectors on the old rows, the window's rows in new files.
    MergeOnRead,
    /// Anything else (refused by validation).
    #[serde(untagged)]
    Other(String),
}

/// `envelope`: what an upsert table's records hold.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawEnvelope {
    /// Debezium change events.
    Debezium,
    /// Rows flattened by Debezium's `ExtractNewRecordState`.
    DebeziumFlattened,
    /// Anything else (refused by validation).
    #[serde(untagged)]
    Other(String),
}

/// `decode.format`: the record value format.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawFormat {
    /// JSON objects against the table schema.
    Json,
    /// Avro in the Confluent wire format.
    Avro,
    /// Protobuf in the Confluent wire format.
    Protobuf,
    /// JSON Schema in the Confluent wire format.
    JsonSchema,
    /// Anything else (refused by validation).
    #[serde(untagged)]
    Other(String),
}

/// `log.format`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawLogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
    /// Anything else (refused by validation).
    #[serde(untagged)]
    Other(String),
}

/// `[commit]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommit {
    /// Delta conflict retries for concurrent, non-overlapping appends.
    pub max_conflict_retries: Option<usize>,
    /// How often a commit (an append, an upsert's MERGE) that lost to a
    /// conflicting commit is planned again on the new version before the
    /// window is rewound and retried later (`max_merge_replans`, its name
    /// before appends shared it, is still read).
    #[serde(alias = "max_merge_replans")]
    pub max_replans: Option<u32>,
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
    pub format: Option<RawFormat>,
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
}
