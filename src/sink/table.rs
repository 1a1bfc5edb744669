//! The destination Delta table: open it (creating it when absent), check its schema
//! and protocol, hand out Parquet writers, and read the Kafka offsets stored in its
//! `txn` actions.
//!
//! Offsets live in the table itself: for every Kafka partition the pipeline has
//! written, a `txn` action with app id `<app_id>/<topic>/<partition>` holds the last
//! offset whose record is accounted for in the table (written as a row, or rejected
//! and counted). Those app ids are what [`crate::offsets::store`] reads and what
//! [`crate::sink::commit`] writes.

use std::collections::HashMap;

use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{DataType, StructType};
use deltalake::operations::create::CreateBuilder;
use deltalake::parquet::basic::{Compression as PqCompression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::writer::RecordBatchWriter;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use url::Url;

use crate::offsets::store::OffsetStore;
use crate::record::TopicPartition;
use crate::schema::{SchemaError, TableSchema};
use crate::sink::log_cache::LogCache;
use crate::sink::retry;
use crate::sink::{Compression, StorageConfig, TableConfig};

mod columns;

use columns::{derived_missing, upsert_missing, wanted_schema};

/// Errors opening, creating or reading the table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// delta-rs failed.
    #[error("table {uri}: {source}")]
    Delta {
        /// The table.
        uri: String,
        /// delta-rs' error.
        #[source]
        source: Box<DeltaTableError>,
    },
    /// The table exists with a schema that cannot hold the configured records.
    #[error("table {uri} does not match the schema file {schema_file}: {message}")]
    SchemaMismatch {
        /// The table.
        uri: String,
        /// The configured schema file.
        schema_file: String,
        /// The differences.
        message: String,
    },
    /// The schema could not be built.
    #[error("table {uri}: {source}")]
    Schema {
        /// The table.
        uri: String,
        /// The problem.
        #[source]
        source: SchemaError,
    },
    /// The table uses a feature this writer does not support.
    #[error("table {uri}: {message}")]
    Unsupported {
        /// The table.
        uri: String,
        /// What is unsupported.
        message: String,
    },
}

impl TableError {
    /// Whether trying again later may succeed (storage unavailable, throttled).
    pub fn is_retryable(&self) -> bool {
        match self {
            TableError::Delta { source, .. } => retry::is_retryable(source),
            _ => false,
        }
    }
}

pub use crate::offsets::store::txn_app_id;

/// An open table and the schema records are written in.
#[derive(Debug, Clone)]
pub struct OpenTable {
    /// The delta-rs handle, loaded at its latest version.
    pub table: DeltaTable,
    /// Record + metadata schema, following the table's own column list.
    pub schema: TableSchema,
    /// Whether this call created the table.
    pub created: bool,
}

fn delta_err(uri: &Url) -> impl Fn(DeltaTableError) -> TableError + '_ {
    move |source| TableError::Delta {
        uri: uri.to_string(),
        source: Box::new(source),
    }
}

/// Build an unloaded handle. Its object store keeps the commit files it reads
/// and writes ([`crate::sink::log_cache`]), so each is fetched once per process.
pub fn table_handle(uri: &Url, storage: &StorageConfig) -> Result<DeltaTable, TableError> {
    builder(uri, storage)
        .and_then(DeltaTableBuilder::build)
        .map_err(delta_err(uri))
}

fn builder(uri: &Url, storage: &StorageConfig) -> Result<DeltaTableBuilder, DeltaTableError> {
    let builder =
        DeltaTableBuilder::from_url(uri.clone())?.with_storage_options(storage.to_options());
    // What delta-rs' own lookup (`logstore_for`) does, with the root store wrapped.
    let config = deltalake::logstore::StorageConfig::parse_options(builder.storage_options())?;
    let scheme = Url::parse(&format!("{}://", uri.scheme()))
        .map_err(|_| DeltaTableError::InvalidTableLocation(uri.to_string()))?;
    let factories = deltalake::logstore::object_store_factories();
    let Some(factory) = factories.get(&scheme) else {
        return Err(DeltaTableError::InvalidTableLocation(uri.to_string()));
    };
    let (root, _) = factory.value().parse_url_opts(uri, &config)?;
    let cached = std::sync::Arc::new(LogCache::wrap(root, uri));
    Ok(builder.with_storage_backend(cached, uri.clone()))
}

/// Load the table at `uri`; `Ok(None)` when there is no table there yet.
pub async fn load(uri: &Url, storage: &StorageConfig) -> Result<Option<DeltaTable>, TableError> {
    let mut table = table_handle(uri, storage)?;
    if !table
        .verify_deltatable_existence()
        .await
        .map_err(delta_err(uri))?
    {
        return Ok(None);
    }
    table.load().await.map_err(delta_err(uri))?;
    Ok(Some(table))
}

/// Open the table, creating it from the configured schema when it does not exist.
/// Safe when several workers start at once: losing the creation race just loads
/// the winner's table.
///
/// The table is created from the configured schema file, or else from `fallback`
/// (the registry's latest schema for registry formats).
pub async fn open_or_create(
    cfg: &TableConfig,
    storage: &StorageConfig,
    fallback: Option<&StructType>,
) -> Result<OpenTable, TableError> {
    let existing = load(&cfg.uri, storage).await?;
    open_or_create_loaded(cfg, storage, existing, fallback).await
}

/// [`open_or_create`] for a caller that has already run [`load`] (to decide what
/// the fallback schema is) and passes its result in `existing`.
pub async fn open_or_create_loaded(
    cfg: &TableConfig,
    storage: &StorageConfig,
    existing: Option<DeltaTable>,
    fallback: Option<&StructType>,
) -> Result<OpenTable, TableError> {
    let uri = &cfg.uri;
    let mut created = false;
    let table = match existing {
        Some(t) => t,
        None => {
            let Some(record) = cfg.schema.as_ref().or(fallback) else {
                return Err(TableError::Unsupported {
                    uri: uri.to_string(),
                    message: "the table does not exist and there is no schema to create it \
                              from: set table.schema_file"
                        .into(),
                });
            };
            let wanted = wanted_schema(cfg, record)?;
            match create(cfg, storage, &wanted.delta).await {
                Ok(t) => {
                    created = true;
                    t
                }
                // Another worker created it between our check and our create (delta-rs
                // reports this as "already exists" or as a lost version-0 race): use theirs.
                Err(e) => match load(uri, storage).await {
                    Ok(Some(t)) => {
                        tracing::info!(table = %uri, "another worker created the table first");
                        t
                    }
                    _ => return Err(e),
                },
            }
        }
    };
    let schema = check_schema(&table, cfg)?;
    Ok(OpenTable {
        table,
        schema,
        created,
    })
}

async fn create(
    cfg: &TableConfig,
    storage: &StorageConfig,
    schema: &StructType,
) -> Result<DeltaTable, TableError> {
    tracing::info!(table = %cfg.uri, "table does not exist; creating it");
    let log_store = builder(&cfg.uri, storage)
        .and_then(|b| b.build_storage())
        .map_err(delta_err(&cfg.uri))?;
    let mut builder = CreateBuilder::new()
        .with_log_store(log_store)
        .with_columns(schema.fields().cloned())
        .with_partition_columns(cfg.partition_by.clone())
        // No retries: when two workers create at once, delta-rs would otherwise
        // "retry" the loser's create as version 1, replacing the winner's metadata.
        // The loser must fail and load the winner's table instead.
        .with_commit_properties(CommitProperties::default().with_max_retries(0));
    for (k, v) in &cfg.properties {
        builder = builder.with_configuration_property(
            k.parse().map_err(|_| TableError::Unsupported {
                uri: cfg.uri.to_string(),
                message: format!("unknown Delta table property `{k}`"),
            })?,
            Some(v.clone()),
        );
    }
    builder.await.map_err(delta_err(&cfg.uri))
}

/// The table's columns must include every record field of the schema file (if one
/// is configured) with the same type, and the metadata columns with theirs.
pub fn check_schema(table: &DeltaTable, cfg: &TableConfig) -> Result<TableSchema, TableError> {
    let uri = &cfg.uri;
    let schema_err = |source| TableError::Schema {
        uri: uri.to_string(),
        source,
    };
    let no_fields = StructType::try_new(Vec::<deltalake::kernel::StructField>::new())
        .expect("an empty struct is valid");
    let wanted = match &cfg.schema {
        Some(record) => wanted_schema(cfg, record)?,
        // Metadata columns only: derived columns need the record fields to be typed,
        // and are checked by name below.
        None => TableSchema::new(&no_fields, &cfg.metadata_columns).map_err(schema_err)?,
    };
    let derived = cfg
        .transform
        .columns
        .iter()
        .map(|(n, _)| n.clone())
        .collect::<Vec<_>>();
    let snapshot = table.snapshot().map_err(delta_err(uri))?;
    let table_schema: StructType = snapshot.schema().as_ref().clone();
    let mut problems = Vec::new();
    for name in derived_missing(cfg, &table_schema) {
        problems.push(format!("derived column `{name}` is missing from the table"));
    }
    problems.extend(upsert_missing(cfg, &table_schema));
    for f in wanted.delta.fields() {
        match table_schema.field(f.name()) {
            None => problems.push(format!("column `{}` is missing from the table", f.name())),
            Some(t) if !same_type(t.data_type(), f.data_type()) => problems.push(format!(
                "column `{}` is {} in the table but {} in the schema",
                f.name(),
                type_name(t.data_type()),
                type_name(f.data_type())
            )),
            Some(_) => {}
        }
    }
    // Without a schema file the producer's schema is checked record by record
    // (registry formats), not here.
    for f in table_schema.fields().filter(|_| cfg.schema.is_some()) {
        if !f.is_nullable() && wanted.delta.field(f.name()).is_none() {
            problems.push(format!(
                "table column `{}` is required but the schema file does not declare it",
                f.name()
            ));
        }
    }
    if !problems.is_empty() {
        return Err(TableError::SchemaMismatch {
            uri: uri.to_string(),
            schema_file: cfg.schema_path.as_ref().map_or_else(
                || "(none: metadata columns only)".to_owned(),
                |p| p.display().to_string(),
            ),
            message: problems.join("; "),
        });
    }
    // Decode with the table's full column list so extra nullable table columns are
    // filled with nulls rather than rejected.
    let schema = TableSchema::from_table(&table_schema, &cfg.metadata_columns, &derived).map_err(
        |source| TableError::Schema {
            uri: uri.to_string(),
            source,
        },
    )?;
    let arrow_kernel: Result<StructType, _> = schema.arrow.as_ref().try_into_kernel();
    if arrow_kernel.is_err() {
        return Err(TableError::Unsupported {
            uri: uri.to_string(),
            message: "the table schema has no Arrow equivalent".into(),
        });
    }
    Ok(schema)
}

fn same_type(a: &DataType, b: &DataType) -> bool {
    // Nullability inside nested types may legitimately differ; compare by JSON
    // shape without it would be stricter than needed, so compare the type names.
    type_name(a) == type_name(b)
}

fn type_name(t: &DataType) -> String {
    serde_json::to_string(t).unwrap_or_else(|_| format!("{t:?}"))
}

/// Change the table's schema so records of `producer` (record fields) can be
/// written: new nullable columns, relaxed nullability. Safe with several workers:
/// each attempt re-reads the table and re-plans against its current schema, so a
/// worker that finds the change already made by another commits nothing, and a
/// concurrent metadata change makes the loser re-plan instead of overwriting it.
/// Returns the table schema afterwards.
pub async fn evolve(
    table: &mut DeltaTable,
    producer: &StructType,
    metadata_columns: &crate::schema::MetadataColumns,
    derived: &[String],
) -> Result<TableSchema, TableError> {
    use deltalake::kernel::transaction::CommitBuilder;
    use deltalake::kernel::{Action, MetadataExt};
    use deltalake::protocol::DeltaOperation;

    use crate::schema::evolve::{Fit, fit};

    let uri = table.table_url().to_string();
    let err = |source: DeltaTableError| TableError::Delta {
        uri: uri.clone(),
        source: Box::new(source),
    };
    let meta: Vec<&str> = metadata_columns
        .names()
        .chain(derived.iter().map(String::as_str))
        .collect();
    for attempt in 1.. {
        table.update_state().await.map_err(err)?;
        let snapshot = table.snapshot().map_err(err)?;
        let current: StructType = snapshot.schema().as_ref().clone();
        let (schema, changes) = match fit(&current, producer, &meta) {
            Fit::Fits => {
                return TableSchema::from_table(&current, metadata_columns, derived).map_err(
                    |source| TableError::Schema {
                        uri: uri.clone(),
                        source,
                    },
                );
            }
            Fit::Incompatible(message) => return Err(TableError::Unsupported { uri, message }),
            Fit::Evolve { schema, changes } => (schema, changes),
        };
        let added: Vec<deltalake::kernel::StructField> = schema
            .fields()
            .filter(|f| current.field(f.name()).is_none())
            .cloned()
            .collect();
        let metadata = snapshot
            .metadata()
            .clone()
            .with_schema(&schema)
            .map_err(|e| TableError::Unsupported {
                uri: uri.clone(),
                message: format!("cannot set the evolved schema: {e}"),
            })?;
        let properties = CommitProperties::default()
            .with_max_retries(0)
            .with_metadata([(
                "tributary.schemaChanges".to_owned(),
                serde_json::Value::from(changes.clone()),
            )]);
        let result = CommitBuilder::from(properties)
            .with_actions(vec![Action::Metadata(metadata)])
            .build(
                Some(snapshot),
                table.log_store(),
                DeltaOperation::AddColumn { fields: added },
            )
            .await;
        match result {
            Ok(done) => {
                tracing::info!(table = %uri, version = done.version(), ?changes, "table schema evolved");
            }
            Err(DeltaTableError::Transaction { source }) if attempt < 50 => {
                tracing::info!(table = %uri, error = %source, "schema change raced another commit; re-planning");
            }
            Err(e) => return Err(err(e)),
        }
    }
    unreachable!("the loop returns")
}

/// Stored offsets for several partitions, in one pass over the log. A caller that
/// reads them more than once (the pipeline) keeps an [`OffsetStore`] instead, which
/// afterwards reads only the commits that landed since.
pub async fn stored_offsets(
    table: &DeltaTable,
    app_id: &str,
    tps: &[TopicPartition],
) -> Result<HashMap<TopicPartition, Option<i64>>, DeltaTableError> {
    OffsetStore::new().offsets(table, app_id, tps).await
}

/// The offset stored in the table for `tp`, if any.
pub async fn stored_offset(
    table: &DeltaTable,
    app_id: &str,
    tp: &TopicPartition,
) -> Result<Option<i64>, DeltaTableError> {
    let mut one = stored_offsets(table, app_id, std::slice::from_ref(tp)).await?;
    Ok(one.remove(tp).flatten())
}

/// Run SQL over the table, registered as `t`, with DataFusion.
pub async fn query(
    table: &DeltaTable,
    sql: &str,
) -> Result<Vec<deltalake::arrow::array::RecordBatch>, DeltaTableError> {
    let ctx = deltalake::datafusion::prelude::SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    ctx.register_table("t", table.table_provider().await?)?;
    Ok(ctx.sql(sql).await?.collect().await?)
}

/// Parquet writer properties for the configured codec and row-group size.
pub fn writer_properties(compression: Compression, row_group_rows: usize) -> WriterProperties {
    let codec = match compression {
        Compression::Snappy => PqCompression::SNAPPY,
        Compression::Zstd(level) => {
            PqCompression::ZSTD(ZstdLevel::try_new(level).unwrap_or_default())
        }
        Compression::Lz4 => PqCompression::LZ4_RAW,
        Compression::Uncompressed => PqCompression::UNCOMPRESSED,
    };
    WriterProperties::builder()
        .set_compression(codec)
        .set_max_row_group_row_count(Some(row_group_rows))
        .build()
}

/// A writer for the table's next file(s).
pub fn new_writer(
    table: &DeltaTable,
    props: WriterProperties,
    target_file_size: u64,
) -> Result<RecordBatchWriter, DeltaTableError> {
    Ok(RecordBatchWriter::for_table(table)?
        .with_writer_properties(props)
        .with_target_file_size(target_file_size))
}
