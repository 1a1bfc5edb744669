//! `tributary validate`: check that a configuration can work before running it:
//! the brokers answer, the topics exist, and the table is readable (or its location
//! reachable, when it will be created). Nothing is written.

use std::time::Duration;

use deltalake::ObjectStore;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::metadata::Metadata;

use crate::config::{Config, Subscription};
use crate::schema::TableSchema;
use crate::source::client_config;
use crate::table;

/// One check and its result.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// `Ok(detail)` or `Err(what is wrong and what to do)`.
    pub outcome: Result<String, String>,
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
            outcome: Err(format!(
                "cannot reach {} within {}s: {e}. Check kafka.brokers, that the brokers run, \
                 and the security settings in [kafka.properties]",
                cfg.kafka.brokers,
                timeout.as_secs()
            )),
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
    checks
}

async fn fetch_metadata(cfg: &Config, timeout: Duration) -> Result<Metadata, String> {
    let client_cfg = client_config(&cfg.kafka);
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client_cfg.create().map_err(|e| e.to_string())?;
        consumer
            .fetch_metadata(None, timeout)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

fn check_topics(sub: &Subscription, m: &Metadata) -> Result<String, String> {
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
                Err(format!(
                    "topic(s) not found: {}. Create them or fix kafka.topics",
                    missing.join(", ")
                ))
            }
        }
        Subscription::Pattern(p) => {
            let re = regex::Regex::new(p).map_err(|e| format!("kafka.topic_pattern: {e}"))?;
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

async fn check_table(cfg: &Config) -> Result<String, String> {
    let uri = &cfg.table.uri;
    match table::load(uri, &cfg.storage).await {
        Ok(Some(t)) => {
            let wanted = TableSchema::new(&cfg.table.schema, &cfg.table.metadata_columns)
                .map_err(|e| e.to_string())?;
            table::check_schema(&t, &cfg.table, &wanted).map_err(|e| e.to_string())?;
            Ok(format!(
                "{uri} at version {}, schema compatible",
                t.version().map_or(-1, |v| v as i64)
            ))
        }
        Ok(None) => {
            // The table will be created: the location must at least be listable.
            let handle = table::table_handle(uri, &cfg.storage).map_err(|e| e.to_string())?;
            let store = handle.object_store();
            store
                .list_with_delimiter(None)
                .await
                .map_err(|e| storage_hint(uri, &e.to_string()))?;
            Ok(format!(
                "{uri} has no table yet; it will be created on first start"
            ))
        }
        Err(e) => Err(storage_hint(uri, &e.to_string())),
    }
}

fn storage_hint(uri: &url::Url, err: &str) -> String {
    match table::storage_hint(err) {
        Some(hint) => format!("cannot read {uri}: {err}. {hint}"),
        None => format!(
            "cannot read {uri}: {err}. Check table.uri, [storage] endpoint/region, and that \
             credentials (storage.access_key_id or the AWS credential chain) can list the location"
        ),
    }
}
