//! `[table]` and `[storage]`: the table's location, schema and Parquet settings,
//! and the one path from storage settings to object-store options.

use super::*;
use crate::decode::envelope::Envelope;

pub(super) fn validate_table(raw: RawTable) -> Result<TableConfig, ConfigError> {
    let uri_template = raw.uri.contains("{topic}").then(|| raw.uri.clone());
    let uri = parse_table_uri(&raw.uri.replace("{topic}", "topic"))
        .map_err(|e| ConfigError::invalid("table.uri", e.to_string()))?;
    let schema = raw.schema_file.as_deref().map(read_schema).transpose()?;
    let compression = raw
        .compression
        .as_deref()
        .unwrap_or("snappy")
        .parse::<Compression>()
        .map_err(|m| ConfigError::invalid("table.compression", m.to_string()))?;
    check_column_names(&raw, &raw.metadata_columns, schema.as_ref())?;
    let upsert = upsert_spec(&raw, schema.as_ref())?;
    let metadata_columns = raw.metadata_columns;
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
        upsert,
    })
}

/// How long an upsert table with `order_by` remembers deleted keys by default.
pub const DEFAULT_DELETE_HORIZON: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

/// `mode`, `key` and `order_by`: an upsert table needs a key of columns it
/// has, and no filter (which could drop a deletion without saying so).
fn upsert_spec(
    raw: &RawTable,
    schema: Option<&deltalake::kernel::StructType>,
) -> Result<Option<UpsertSpec>, ConfigError> {
    if !is_upsert(raw)? {
        return Ok(None);
    }
    let key = key(raw)?;
    if raw.filter.as_deref().is_some_and(|f| !f.trim().is_empty()) {
        return Err(ConfigError::invalid(
            "table.filter",
            "a filter could drop the deletion of a key without saying so; upsert tables take \
             every change (filter the topic upstream instead)",
        ));
    }
    let known = |c: &str| {
        schema.is_none_or(|s| s.fields().any(|f| f.name() == c))
            || raw.metadata_columns.names().any(|n| n == c)
            || raw.derived_columns.contains_key(c)
    };
    let envelope = envelope(raw)?;
    let (order_by, source_order) = order_by(raw, envelope)?;
    for c in key
        .iter()
        .chain(order_by.iter().filter(|_| source_order.is_none()))
    {
        if !known(c) {
            return Err(ConfigError::invalid(
                "table.key",
                format!("`{c}` is not a record field, metadata column or derived column"),
            ));
        }
    }
    if let Some(o) = order_by.as_ref().filter(|o| key.contains(o)) {
        return Err(ConfigError::invalid(
            "table.order_by",
            format!("`{o}` is a key column: order_by must be another column"),
        ));
    }
    let delete_horizon = raw.delete_horizon.unwrap_or(DEFAULT_DELETE_HORIZON);
    if raw.delete_horizon.is_some() && order_by.is_none() {
        return Err(ConfigError::invalid(
            "table.delete_horizon",
            "delete_horizon keeps the order values of deleted keys: it needs order_by",
        ));
    }
    Ok(Some(UpsertSpec {
        key,
        order_by,
        envelope,
        source_order,
        delete_horizon,
        strategy: strategy(raw)?,
    }))
}

/// `upsert_strategy`: copy-on-write unless merge-on-read is asked for.
fn strategy(raw: &RawTable) -> Result<UpsertStrategy, ConfigError> {
    match &raw.upsert_strategy {
        None | Some(RawStrategy::CopyOnWrite) => Ok(UpsertStrategy::CopyOnWrite),
        Some(RawStrategy::MergeOnRead) => Ok(UpsertStrategy::MergeOnRead),
        Some(RawStrategy::Other(other)) => Err(ConfigError::invalid(
            "table.upsert_strategy",
            format!("`{other}` is not a strategy: use \"copy-on-write\" or \"merge-on-read\""),
        )),
    }
}

/// Whether the table is an upsert table (`mode`); the upsert keys are refused
/// on an append table.
fn is_upsert(raw: &RawTable) -> Result<bool, ConfigError> {
    match &raw.mode {
        None | Some(RawMode::Append) => {
            if !raw.key.is_empty() || raw.order_by.is_some() || raw.envelope.is_some() {
                return Err(ConfigError::invalid(
                    "table.key",
                    "key, order_by and envelope are for mode = \"upsert\"; set it, or remove them",
                ));
            }
            if raw.upsert_strategy.is_some() {
                return Err(ConfigError::invalid(
                    "table.upsert_strategy",
                    "upsert_strategy is for mode = \"upsert\"; set it, or remove it",
                ));
            }
            Ok(false)
        }
        Some(RawMode::Upsert) => Ok(true),
        Some(RawMode::Other(other)) => Err(ConfigError::invalid(
            "table.mode",
            format!("`{other}` is not a mode: use \"append\" or \"upsert\""),
        )),
    }
}

/// The key columns: those named, or else the Kafka key's metadata column.
fn key(raw: &RawTable) -> Result<Vec<String>, ConfigError> {
    match (&raw.key[..], &raw.metadata_columns.key) {
        ([], Some(kafka_key)) => Ok(vec![kafka_key.clone()]),
        ([], None) => Err(ConfigError::invalid(
            "table.key",
            "mode = \"upsert\" is keyed by the Kafka key unless `key` names columns: set \
             [table.metadata_columns] key = \"_kafka_key\" to store it, or key = [\"id\"]",
        )),
        (named, _) => Ok(named.to_vec()),
    }
}

/// `order_by`: a column, or `source.FIELD` of Debezium events (kept in the
/// table's column `_source_FIELD`): the column, and the source field.
fn order_by(
    raw: &RawTable,
    envelope: Envelope,
) -> Result<(Option<String>, Option<String>), ConfigError> {
    let Some(o) = raw.order_by.as_deref().map(str::trim) else {
        return Ok((None, None));
    };
    let Some(field) = o.strip_prefix("source.") else {
        return Ok((Some(o.to_owned()), None));
    };
    if envelope != Envelope::Debezium {
        return Err(ConfigError::invalid(
            "table.order_by",
            format!("`{o}` is a field of Debezium's `source`: it needs envelope = \"debezium\""),
        ));
    }
    if field.is_empty() || !field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(ConfigError::invalid(
            "table.order_by",
            format!("`{o}`: name one field of `source`, e.g. source.lsn or source.ts_ms"),
        ));
    }
    Ok((
        Some(crate::decode::debezium::source_column(field)),
        Some(field.to_owned()),
    ))
}

/// `envelope`: none, `debezium` or `debezium-flattened` (without derived
/// columns).
fn envelope(raw: &RawTable) -> Result<Envelope, ConfigError> {
    let envelope = match &raw.envelope {
        None => return Ok(Envelope::Rows),
        Some(RawEnvelope::Debezium) => Envelope::Debezium,
        Some(RawEnvelope::DebeziumFlattened) => Envelope::DebeziumFlattened,
        Some(RawEnvelope::Other(other)) => {
            return Err(ConfigError::invalid(
                "table.envelope",
                format!(
                    "`{other}` is not an envelope: use \"debezium\" (change events), \
                     \"debezium-flattened\" (ExtractNewRecordState rows), or leave it out"
                ),
            ));
        }
    };
    if !raw.derived_columns.is_empty() {
        return Err(ConfigError::invalid(
            "table.derived_columns",
            "derived columns are not computed for Debezium change events yet; remove them",
        ));
    }
    Ok(envelope)
}

/// Read and parse a Delta/Spark schema file.
fn read_schema(path: &Path) -> Result<deltalake::kernel::StructType, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Schema {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    crate::schema::parse_schema_json(&text).map_err(|e| ConfigError::Schema {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Metadata, derived and partition columns: named once, not clashing with the
/// record's fields, and partition columns that exist.
fn check_column_names(
    raw: &RawTable,
    metadata_columns: &MetadataColumns,
    schema: Option<&deltalake::kernel::StructType>,
) -> Result<(), ConfigError> {
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
            .into_iter()
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
                .into_iter()
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
        let in_schema = schema.is_none_or(|s| s.fields().any(|f| f.name() == col));
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
    Ok(())
}

pub(super) fn validate_storage(raw: RawStorage, uri: &Url) -> Result<StorageConfig, ConfigError> {
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
