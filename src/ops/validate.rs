//! `tributary validate`: check that a configuration can work before running it:
//! the brokers answer, the topics exist, and the table is readable (or its location
//! reachable, when it will be created). Nothing is written.

use std::time::Duration;

use deltalake::ObjectStore;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::metadata::Metadata;

use crate::config::{Config, Subscription};
use crate::sink::table;
use crate::source::{client_config, log_to_tracing};

/// What a failed check found, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Problem(pub String);

impl From<String> for Problem {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// One check and its result.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// `Ok(detail)` or `Err(what is wrong and what to do)`.
    pub outcome: Result<String, Problem>,
}

impl Check {
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        self.outcome.is_ok()
    }
}

/// Run every check; later checks run even when earlier ones fail.
pub async fn run(cfg: &Config, timeout: Duration) -> Vec<Check> {
    let mut checks = Vec::new();
    let metadata = fetch_metadata(cfg, timeout).await;
    match &metadata {
        Ok(m) => checks.push(Check {
            name: "kafka brokers",
            outcome: Ok(format!(
                "{} answered ({} broker(s), {} topic(s))",
                cfg.kafka.brokers,
                m.brokers().len(),
                m.topics().len()
            )),
        }),
        Err(e) => checks.push(Check {
            name: "kafka brokers",
            outcome: Err(Problem::from(format!(
                "cannot reach {} within {}s: {e}. Check kafka.brokers, that the brokers run, \
                 and the security settings in [kafka.properties]",
                cfg.kafka.brokers,
                timeout.as_secs()
            ))),
        }),
    }
    if let Ok(m) = &metadata {
        checks.push(Check {
            name: "kafka topics",
            outcome: check_topics(&cfg.kafka.subscription, m),
        });
    }
    checks.push(Check {
        name: "delta table",
        outcome: check_table(cfg).await,
    });
    if matches!(cfg.table.uri.scheme(), "s3" | "s3a") {
        checks.push(Check {
            name: "s3 write permission",
            outcome: s3_write_probe(cfg).await,
        });
    }
    checks
}

/// Put and delete a small object under the table's prefix with the AWS SDK, using the
/// same endpoint, region and credentials delta-rs will use.
async fn s3_write_probe(cfg: &Config) -> Result<String, Problem> {
    let uri = &cfg.table.uri;
    let opts = cfg.storage.to_options();
    let bucket = uri.host_str().unwrap_or_default().to_owned();
    let prefix = uri.path().trim_matches('/');
    let key = format!(
        "{}{}_tributary_probe/{}",
        prefix,
        if prefix.is_empty() { "" } else { "/" },
        uuid::Uuid::new_v4()
    );
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = opts.get("aws_region") {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(endpoint) = opts.get("aws_endpoint_url") {
        loader = loader.endpoint_url(endpoint);
    }
    if let (Some(id), Some(secret)) = (
        opts.get("aws_access_key_id"),
        opts.get("aws_secret_access_key"),
    ) {
        loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
            id,
            secret,
            opts.get("aws_session_token").cloned(),
            None,
            "tributary-config",
        ));
    }
    let sdk = loader.load().await;
    let path_style = opts
        .get("aws_virtual_hosted_style_request")
        .is_some_and(|v| v == "false");
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(path_style)
            .build(),
    );
    let describe = |e: &dyn std::fmt::Display, what: &str| {
        let msg = format!("{e}");
        let hint = crate::sink::retry::storage_hint(&msg)
            .unwrap_or("the credentials need s3:PutObject and s3:DeleteObject on the table prefix");
        format!("cannot {what} s3://{bucket}/{key}: {msg}. {hint}")
    };
    let mut put = client.put_object().bucket(&bucket).key(&key).body(
        aws_sdk_s3::primitives::ByteStream::from_static(b"tributary write probe"),
    );
    // Probe with the encryption the table writes use: a bucket policy requiring it
    // refuses unencrypted puts.
    if let Some(sse) = opts.get("aws_server_side_encryption") {
        put =
            put.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::from(sse.as_str()));
    }
    if let Some(kms) = opts.get("aws_sse_kms_key_id") {
        put = put.ssekms_key_id(kms);
    }
    put.send()
        .await
        .map_err(|e| describe(&aws_sdk_s3::error::DisplayErrorContext(&e), "write"))?;
    client
        .delete_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await
        .map_err(|e| describe(&aws_sdk_s3::error::DisplayErrorContext(&e), "delete"))?;
    Ok(format!("wrote and deleted s3://{bucket}/{key}"))
}

/// Keeps librdkafka's first error-level log line (a refused certificate, failed SASL
/// authentication, a refused connection), so a failed check says why rather than
/// only that the brokers did not answer in time.
#[derive(Default)]
struct FirstError(std::sync::Mutex<Option<String>>);

impl FirstError {
    fn record(&self, message: &str) {
        self.0
            .lock()
            .expect("first error")
            .get_or_insert_with(|| message.to_string());
    }
}

impl ClientContext for FirstError {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if log_to_tracing(level, fac, log_message) {
            self.record(log_message);
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.record(&format!("{error}: {reason}"));
        tracing::error!(target: "librdkafka", "{error}: {reason}");
    }
}

impl ConsumerContext for FirstError {}

async fn fetch_metadata(cfg: &Config, timeout: Duration) -> Result<Metadata, Problem> {
    let client_cfg = client_config(&cfg.kafka);
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer<FirstError> = client_cfg
            .create_with_context(FirstError::default())
            .map_err(|e| Problem::from(e.to_string()))?;
        consumer.fetch_metadata(None, timeout).map_err(|e| {
            // librdkafka queues its log lines and errors for the polling thread:
            // serve them now to learn the cause.
            for _ in 0..5 {
                let _ = consumer.poll(Duration::from_millis(20));
            }
            Problem(
                match consumer.context().0.lock().expect("first error").take() {
                    Some(cause) => format!("{e}; librdkafka: {cause}"),
                    None => e.to_string(),
                },
            )
        })
    })
    .await
    .map_err(|e| Problem::from(e.to_string()))?
}

fn check_topics(sub: &Subscription, m: &Metadata) -> Result<String, Problem> {
    match sub {
        Subscription::Topics(topics) => {
            let mut found = Vec::new();
            let mut missing = Vec::new();
            for t in topics {
                match m.topics().iter().find(|mt| mt.name() == t) {
                    Some(mt) if mt.error().is_none() && !mt.partitions().is_empty() => {
                        found.push(format!("{t} ({} partitions)", mt.partitions().len()))
                    }
                    _ => missing.push(t.as_str()),
                }
            }
            if missing.is_empty() {
                Ok(found.join(", "))
            } else {
                Err(Problem::from(format!(
                    "topic(s) not found: {}. Create them or fix kafka.topics",
                    missing.join(", ")
                )))
            }
        }
        Subscription::Pattern(p) => {
            let re = regex::Regex::new(p)
                .map_err(|e| Problem::from(format!("kafka.topic_pattern: {e}")))?;
            let n = m.topics().iter().filter(|t| re.is_match(t.name())).count();
            if n == 0 {
                Ok(format!(
                    "no topic matches {p} yet; the consumer picks them up when they appear"
                ))
            } else {
                Ok(format!("{n} topic(s) match {p}"))
            }
        }
    }
}

async fn check_table(cfg: &Config) -> Result<String, Problem> {
    let uri = &cfg.table.uri;
    match table::load(uri, &cfg.storage).await {
        Ok(Some(t)) => {
            table::check_schema(&t, &cfg.table).map_err(|e| Problem::from(e.to_string()))?;
            let dv = crate::sink::dv::enabled(&t).map_err(|e| Problem::from(e.to_string()))?;
            Ok(format!(
                "{uri} at version {}, schema compatible{}",
                t.version().map_or(-1, |v| v as i64),
                merge_on_read(cfg, Some(dv))
            ))
        }
        Ok(None) => {
            // The table will be created: the location must at least be listable.
            let handle =
                table::table_handle(uri, &cfg.storage).map_err(|e| Problem::from(e.to_string()))?;
            let store = handle.object_store();
            store
                .list_with_delimiter(None)
                .await
                .map_err(|e| storage_hint(uri, &e.to_string()))?;
            Ok(format!(
                "{uri} has no table yet; it will be created on first start{}",
                merge_on_read(cfg, None)
            ))
        }
        Err(e) => Err(storage_hint(uri, &e.to_string())),
    }
}

/// What `upsert_strategy = "merge-on-read"` does to the table and to who can
/// read it (empty for other tables). `enabled`: whether the table already has
/// deletion vectors (`None`: no table yet).
fn merge_on_read(cfg: &Config, enabled: Option<bool>) -> String {
    use crate::config::UpsertStrategy;
    if !cfg
        .table
        .upsert
        .as_ref()
        .is_some_and(|u| u.strategy == UpsertStrategy::MergeOnRead)
    {
        return String::new();
    }
    let upgrade = match enabled {
        Some(true) => "deletion vectors already enabled",
        Some(false) => {
            "the daemon enables deletion vectors at start, upgrading the table to reader 3 / \
             writer 7 (irreversible)"
        }
        None => "created with deletion vectors (reader 3 / writer 7)",
    };
    format!(
        "; upsert_strategy = merge-on-read: {upgrade}. Readers with deletion-vector support \
         read it (Spark with Delta 2.4+, Databricks, Trino, DuckDB's delta extension, the \
         deltalake package's QueryBuilder, pysail); readers without cannot (the deltalake \
         package's to_pyarrow_table, Delta before 2.3; Athena's support is not documented)"
    )
}

fn storage_hint(uri: &url::Url, err: &str) -> Problem {
    Problem(match crate::sink::retry::storage_hint(err) {
        Some(hint) => format!("cannot read {uri}: {err}. {hint}"),
        None => format!(
            "cannot read {uri}: {err}. Check table.uri, [storage] endpoint/region, and that \
             credentials (storage.access_key_id or the AWS credential chain) can list the location"
        ),
    })
}
