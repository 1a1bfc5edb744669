//! From the file as written to a [`Config`]: every value checked, defaults
//! resolved, and an error that names the key and says what to fix.

use super::*;

impl RawConfig {
    /// Check every value, read the schema file, and resolve defaults.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let app_id = validate_app_id(&self.app_id)?;
        let mut kafka = validate_kafka(self.kafka, &app_id)?;
        let base_table = self.table.clone();
        let table = validate_table(self.table)?;
        let storage = validate_storage(self.storage, &table.uri)?;
        let flush = validate_flush(&self.flush)?;
        let memory_budget = validate_memory_budget(&self.flush)?;
        kafka.prefetch_bytes = KafkaConfig::prefetch_for_budget(memory_budget.limit());
        let commit = CommitConfig {
            max_conflict_retries: self.commit.max_conflict_retries.unwrap_or(100),
            max_replans: self.commit.max_replans.unwrap_or(10),
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

        let (metrics_listen, log_json) = validate_observability(&self.observability, &self.log)?;
        Ok(Config {
            app_id,
            kafka,
            table,
            storage,
            flush,
            memory_budget,
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

fn validate_app_id(raw: &str) -> Result<String, ConfigError> {
    let app_id = raw.trim().to_owned();
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
    Ok(app_id)
}

fn validate_flush(raw: &RawFlush) -> Result<FlushPolicy, ConfigError> {
    let defaults = FlushPolicy::default();
    let flush = FlushPolicy {
        max_rows: raw.max_rows.unwrap_or(defaults.max_rows),
        max_bytes: raw
            .max_bytes
            .map(|b| b.as_u64())
            .unwrap_or(defaults.max_bytes),
        max_age: raw.max_age.unwrap_or(defaults.max_age),
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
    Ok(flush)
}

/// `[flush] memory_budget`: at least [`MemoryBudget::MIN`].
fn validate_memory_budget(raw: &RawFlush) -> Result<MemoryBudget, ConfigError> {
    let limit = raw
        .memory_budget
        .map_or(MemoryBudget::DEFAULT, |b| b.as_u64());
    if limit < MemoryBudget::MIN {
        return Err(ConfigError::invalid(
            "flush.memory_budget",
            "must be at least 1 MiB (it bounds all tables' open windows together)",
        ));
    }
    Ok(MemoryBudget::new(limit))
}

/// `[observability]` and `[log]`: where to serve metrics, and whether to log JSON.
fn validate_observability(
    obs: &RawObservability,
    log: &RawLog,
) -> Result<(Option<std::net::SocketAddr>, bool), ConfigError> {
    let metrics_listen = obs
        .listen
        .as_ref()
        .map(|a| {
            a.parse::<std::net::SocketAddr>().map_err(|e| {
                ConfigError::invalid("observability.listen", format!("`{a}` is not IP:PORT: {e}"))
            })
        })
        .transpose()?;
    let log_json = match log.format.as_ref().unwrap_or(&RawLogFormat::Text) {
        RawLogFormat::Text => false,
        RawLogFormat::Json => true,
        RawLogFormat::Other(other) => {
            return Err(ConfigError::invalid(
                "log.format",
                format!("`{other}`: use `text` or `json`"),
            ));
        }
    };
    Ok((metrics_listen, log_json))
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
    check_brokers(&raw.brokers)?;
    let subscription = subscription(raw.topics, raw.topic_pattern)?;
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
    // Set from the memory budget once it is read.
    let prefetch_bytes = KafkaConfig::prefetch_for_budget(MemoryBudget::DEFAULT);
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
        prefetch_bytes,
    })
}

/// `kafka.brokers`: a non-empty list of host:port.
fn check_brokers(brokers: &str) -> Result<(), ConfigError> {
    if brokers.trim().is_empty() {
        return Err(ConfigError::invalid(
            "kafka.brokers",
            "must list at least one host:port",
        ));
    }
    for broker in brokers.split(',') {
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
    Ok(())
}

/// `kafka.topics` or `kafka.topic_pattern` (anchored with `^`), one of the two.
fn subscription(
    topics: Vec<String>,
    topic_pattern: Option<String>,
) -> Result<Subscription, ConfigError> {
    Ok(match (topics.is_empty(), topic_pattern) {
        (false, None) => {
            if let Some(bad) = topics.iter().find(|t| !valid_topic_name(t)) {
                return Err(ConfigError::invalid(
                    "kafka.topics",
                    format!("`{bad}` is not a valid Kafka topic name"),
                ));
            }
            Subscription::Topics(topics)
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

/// `[schema_registry]`: its URLs, credentials (one kind) and CA file.
fn validate_registry(
    r: RawRegistry,
) -> Result<crate::decode::registry::RegistryConfig, ConfigError> {
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
    Ok(crate::decode::registry::RegistryConfig {
        urls,
        username: r.username,
        password: r.password,
        bearer_token: r.bearer_token,
        ca_file: r.ca_file,
        timeout: r.timeout.unwrap_or(Duration::from_secs(30)),
    })
}

fn validate_decode(
    raw: RawDecode,
    registry: Option<RawRegistry>,
    kafka: &KafkaConfig,
    table: &TableConfig,
) -> Result<DecodeConfig, ConfigError> {
    let format = match raw.format.as_ref().unwrap_or(&RawFormat::Json) {
        RawFormat::Json => Format::Json,
        RawFormat::Avro => Format::Avro,
        RawFormat::JsonSchema => Format::JsonSchema,
        RawFormat::Protobuf => Format::Protobuf,
        RawFormat::Other(other) => {
            return Err(ConfigError::invalid(
                "decode.format",
                format!(
                    "unsupported format `{other}`: use `json`, `avro`, `protobuf` or `json_schema`"
                ),
            ));
        }
    };
    let subject = raw.subject.unwrap_or_else(|| "{topic}-value".to_owned());
    let registry = registry.map(validate_registry).transpose()?;
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

/// The topics a route takes: a list (each one subscribed) or a pattern
/// (anchored at the start, as Kafka's own pattern subscription is).
fn route_topics(i: usize, r: &RawRoute, kafka: &KafkaConfig) -> Result<TopicMatch, ConfigError> {
    let invalid = |m: String| ConfigError::invalid("routes", format!("route {}: {m}", i + 1));
    match (r.topics.is_empty(), &r.topic_pattern) {
        (false, None) => {
            if let Subscription::Topics(subscribed) = &kafka.subscription
                && let Some(t) = r.topics.iter().find(|t| !subscribed.contains(t))
            {
                return Err(invalid(format!("topic `{t}` is not in kafka.topics")));
            }
            Ok(TopicMatch::Topics(r.topics.clone()))
        }
        (true, Some(p)) => {
            let anchored = if p.starts_with('^') {
                p.clone()
            } else {
                format!("^{p}")
            };
            regex::Regex::new(&anchored)
                .map(TopicMatch::Pattern)
                .map_err(|e| invalid(format!("topic_pattern `{p}`: {e}")))
        }
        _ => Err(invalid("set either `topics` or `topic_pattern`".into())),
    }
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
    let topics = route_topics(i, &r, kafka)?;
    let strategy = base
        .upsert_strategy
        .clone()
        .filter(|_| r.mode == Some(RawMode::Upsert));
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
        mode: r.mode,
        key: r.key,
        order_by: r.order_by,
        envelope: r.envelope,
        delete_horizon: base.delete_horizon,
        // The table's strategy is its upsert routes' too.
        upsert_strategy: strategy,
    })
    .map_err(|e| invalid(e.to_string()))?;
    if decode.format == Format::Json && table.schema.is_none() {
        return Err(invalid(
            "schema_file is required for decode.format = \"json\"".into(),
        ));
    }
    if r.flush.memory_budget.is_some() {
        return Err(invalid(
            "flush.memory_budget is one budget for all tables: set it in the top-level [flush]"
                .into(),
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
