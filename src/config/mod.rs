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
    CommitConfig, Compression, StorageConfig, TableConfig, TableUriError, UpsertSpec,
    UpsertStrategy, parse_table_uri,
};
pub use crate::source::{KafkaConfig, OffsetReset, Subscription};
pub use crate::window::FlushPolicy;
pub use crate::window::budget::MemoryBudget;

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

mod env;
mod raw;
mod table;
mod validate;

use env::expand_value;
pub use raw::*;
pub use table::check_commit_safety;
use table::{validate_storage, validate_table};

// ---------------------------------------------------------------------------
// Validated form.
// ---------------------------------------------------------------------------

/// A validated configuration.
// Built only by `RawConfig::validate` (the daemon, the demo and the tests alike):
// code outside the crate cannot write a `Config` literal that skips validation.
#[non_exhaustive]
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
    /// What all tables' windows may hold together (`[flush] memory_budget`).
    pub memory_budget: MemoryBudget,
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

#[cfg(test)]
mod tests {
    use super::*;
    use env::expand_env;

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
    fn upsert_needs_a_key_it_has_and_no_filter() {
        let table = |extra: &str| parse(&MINIMAL.replace("[table]", &format!("[table]\n{extra}")));
        let c = table("mode = \"upsert\"\nkey = [\"id\"]").unwrap();
        assert_eq!(
            c.table.upsert,
            Some(UpsertSpec {
                key: vec!["id".into()],
                order_by: None,
                envelope: crate::decode::envelope::Envelope::Rows,
                source_order: None,
                delete_horizon: table::DEFAULT_DELETE_HORIZON,
                strategy: Default::default(),
            })
        );
        assert_eq!(parse(MINIMAL).unwrap().table.upsert, None);
        // Without `key`: the Kafka key, when its metadata column is stored.
        let by_kafka_key = parse(&format!(
            "{}\n[table.metadata_columns]\nkey = \"_k\"\n",
            MINIMAL.replace("[table]", "[table]\nmode = \"upsert\"")
        ))
        .unwrap();
        assert_eq!(
            by_kafka_key.table.upsert.map(|u| u.key),
            Some(vec!["_k".to_owned()])
        );
        for (extra, key, says) in [
            (
                "mode = \"upsert\"",
                "table.key",
                "keyed by the Kafka key unless",
            ),
            (
                "mode = \"upsert\"\nkey = [\"nope\"]",
                "table.key",
                "`nope` is not",
            ),
            ("mode = \"merge\"", "table.mode", "`merge` is not a mode"),
            ("key = [\"id\"]", "table.key", "for mode = \"upsert\""),
            (
                "mode = \"upsert\"\nkey = [\"id\"]\norder_by = \"id\"",
                "table.order_by",
                "is a key column",
            ),
            (
                "mode = \"upsert\"\nkey = [\"id\"]\nfilter = \"id > 1\"",
                "table.filter",
                "deletion",
            ),
            (
                "mode = \"upsert\"\nkey = [\"id\"]\nenvelope = \"maxwell\"",
                "table.envelope",
                "not an envelope",
            ),
            (
                "envelope = \"debezium\"",
                "table.key",
                "for mode = \"upsert\"",
            ),
            (
                "mode = \"upsert\"\nkey = [\"id\"]\norder_by = \"source.lsn\"",
                "table.order_by",
                "needs envelope = \"debezium\"",
            ),
            (
                "mode = \"upsert\"\nkey = [\"id\"]\nenvelope = \"debezium\"\norder_by = \"source.\"",
                "table.order_by",
                "name one field of `source`",
            ),
            (
                "mode = \"upsert\"\nkey = [\"id\"]\nenvelope = \"debezium-flattened\"\n\
                 derived_columns = { day = \"CAST(ts AS DATE)\" }",
                "table.derived_columns",
                "not computed for Debezium",
            ),
        ] {
            let err = table(extra).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says), "{extra}: {err}");
        }
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
            (
                format!("{MINIMAL}[flush]\nmemory_budget = \"512 KiB\""),
                "flush.memory_budget",
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
    fn the_memory_budget_is_global_with_a_default() {
        assert_eq!(
            parse(MINIMAL).unwrap().memory_budget,
            MemoryBudget::default()
        );
        let c = parse(&format!("{MINIMAL}[flush]\nmemory_budget = \"64 MiB\"")).unwrap();
        assert_eq!(c.memory_budget.limit(), 64 << 20);
        // librdkafka's prefetch follows the budget: a sixteenth, at least 1 MiB.
        assert_eq!(parse(MINIMAL).unwrap().kafka.prefetch_bytes, 16 << 20);
        assert_eq!(c.kafka.prefetch_bytes, 4 << 20);
        let small = parse(&format!("{MINIMAL}[flush]\nmemory_budget = \"8 MiB\"")).unwrap();
        assert_eq!(small.kafka.prefetch_bytes, 1 << 20);
        let route = format!(
            "{}[[routes]]\ntopics = [\"payments\"]\nuri = \"s3://b/pay\"\nschema_file = \"SCHEMA\"\n[routes.flush]\nmemory_budget = \"64 MiB\"\n",
            MINIMAL.replace(
                r#"topics = ["orders"]"#,
                r#"topics = ["orders", "payments"]"#
            )
        );
        let err = parse(&route).unwrap_err().to_string();
        assert!(err.contains("top-level [flush]"), "{err}");
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

    /// README's minimal configuration is a valid one, with the defaults it
    /// says (a config next to the repository's root, as written).
    #[test]
    fn the_readmes_minimal_config_is_valid_and_its_defaults_are_as_it_says() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
        let section = readme.split("## A minimal configuration").nth(1).unwrap();
        let toml = section.split("```toml\n").nth(1).unwrap();
        let toml = toml.split("```").next().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("minimal.toml");
        let absolute = root.join("schemas/demo_events.json");
        std::fs::write(
            &path,
            toml.replace("schemas/demo_events.json", absolute.to_str().unwrap()),
        )
        .unwrap();
        let c = RawConfig::load(&path, &|_| None)
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(c.table.uri.as_str(), "s3://my-bucket/tables/events");
        assert_eq!(c.table.compression, Compression::Snappy);
        assert_eq!(c.flush.max_rows, 1_000_000);
        assert_eq!(c.flush.max_bytes, 128 * 1024 * 1024);
        assert_eq!(c.flush.max_age, Duration::from_secs(30));
        assert_eq!(c.memory_budget.limit(), 256 * 1024 * 1024);
        assert_eq!(
            c.kafka.auto_offset_reset,
            crate::source::OffsetReset::Earliest
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
    fn upsert_through_the_registry_takes_rows_and_envelopes() {
        let base = "app_id = \"a\"\n[kafka]\nbrokers = \"h:1\"\ntopics = [\"t\"]\n[table]\n\
                    uri = \"s3://b/t\"\nmode = \"upsert\"\nkey = [\"id\"]\nENVELOPE\n\
                    [decode]\nformat = \"avro\"\n[schema_registry]\nurl = \"http://r:8081\"\n";
        let parse = |text: &str| RawConfig::parse(text, None, &|_| None).unwrap().validate();
        let rows = parse(&base.replace("ENVELOPE", "")).unwrap();
        assert_eq!(
            rows.table.upsert.map(|u| u.key),
            Some(vec!["id".to_owned()])
        );
        let dbz = parse(&base.replace(
            "ENVELOPE",
            "envelope = \"debezium\"\norder_by = \"source.lsn\"",
        ))
        .unwrap()
        .table
        .upsert
        .unwrap();
        assert_eq!(dbz.envelope, crate::decode::envelope::Envelope::Debezium);
        assert_eq!(dbz.source_order.as_deref(), Some("lsn"));
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
