//! Opening tables: one at its first use, and many at once when an assignment
//! brings the topics of a `{topic}` route (hundreds of tables, each a few storage
//! round trips, would otherwise be opened one after another inside the rebalance
//! callback while the group waits).

use crate::decode::envelope::Envelope;
use crate::decode::segment::EnvelopeDecoder;
use std::sync::Arc;

use deltalake::DeltaTable;
use deltalake::kernel::StructType;
use futures::StreamExt;

use super::{Pipeline, PipelineError, TableSink};
use crate::config::{Config, FlushPolicy, TableConfig, UpsertStrategy};
use crate::decode::Decoder;
use crate::decode::registry::Registry;
use crate::decode::transform::Transform;
use crate::sink::commit::TableLog;
use crate::sink::table::{self, TableError};
use crate::sink::upsert::deletes::DeleteMemory;
use crate::window::Window;

/// Tables opened at once at an assignment.
const OPEN_CONCURRENCY: usize = 16;

impl Pipeline {
    /// The sink for `topic`'s records, opening (or creating) its table on first use.
    pub(super) async fn sink_for(&mut self, topic: &Arc<str>) -> Result<usize, PipelineError> {
        if let Some(&i) = self.sink_of_topic.get(topic) {
            return Ok(i);
        }
        let route = self.route_of(topic);
        let i = self.open_sink(route, topic).await?;
        self.sink_of_topic.insert(topic.clone(), i);
        Ok(i)
    }

    fn route_of(&self, topic: &str) -> usize {
        self.routes
            .iter()
            .position(|r| r.topics.matches(topic))
            .expect("the [table] route matches every topic")
    }

    /// The sink already writing the table `tcfg` names.
    fn sink_of_table(&self, tcfg: &TableConfig) -> Option<usize> {
        self.sinks.iter().position(|s| s.tcfg.uri == tcfg.uri)
    }

    /// What opening a table of route `route` needs.
    fn opening(&self, route: usize) -> Opening {
        Opening {
            cfg: self.cfg.clone(),
            registry: self.registry.clone(),
            flush: self.routes[route].flush,
        }
    }

    /// Open the tables of `topics` that are not open yet, [`OPEN_CONCURRENCY`] at
    /// a time. A table that fails to open is left to [`Pipeline::sink_for`], which
    /// tries again and says what went wrong.
    pub(super) async fn open_sinks(&mut self, topics: &[Arc<str>]) {
        let mut wanted: Vec<(usize, TableConfig, Arc<str>)> = Vec::new();
        for topic in topics {
            if self.sink_of_topic.contains_key(topic) {
                continue;
            }
            let route = self.route_of(topic);
            let Ok(tcfg) = self.routes[route].table_for(topic) else {
                continue;
            };
            let open = self.sink_of_table(&tcfg).is_some();
            if !open && !wanted.iter().any(|(_, t, _)| t.uri == tcfg.uri) {
                wanted.push((route, tcfg, topic.clone()));
            }
        }
        if wanted.len() < 2 {
            return;
        }
        // Owned before the stream starts: no borrow of the pipeline is held across
        // its awaits (the pipeline is not Sync).
        let openings: Vec<(Opening, TableConfig, Arc<str>)> = wanted
            .into_iter()
            .map(|(route, tcfg, topic)| (self.opening(route), tcfg, topic))
            .collect();
        let opened: Vec<(Arc<str>, Result<TableSink, PipelineError>)> =
            futures::stream::iter(openings)
                .map(|(opening, tcfg, topic)| async move {
                    let sink = opening.sink(tcfg, &topic).await;
                    (topic, sink)
                })
                .buffer_unordered(OPEN_CONCURRENCY)
                .collect()
                .await;
        for (topic, sink) in opened {
            if let Ok(sink) = sink {
                self.sinks.push(sink);
                self.sink_of_topic.insert(topic, self.sinks.len() - 1);
            }
        }
    }

    /// Open the table of route `route` for `topic` (or find it open already).
    pub(super) async fn open_sink(
        &mut self,
        route: usize,
        topic: &str,
    ) -> Result<usize, PipelineError> {
        let tcfg = self.routes[route]
            .table_for(topic)
            .map_err(|e| PipelineError::Route(e.to_string()))?;
        if let Some(i) = self.sink_of_table(&tcfg) {
            return Ok(i);
        }
        let sink = self.opening(route).sink(tcfg, topic).await?;
        self.sinks.push(sink);
        Ok(self.sinks.len() - 1)
    }
}

/// What opening a table needs, owned, so that several open at once.
struct Opening {
    cfg: Arc<Config>,
    registry: Option<Registry>,
    flush: FlushPolicy,
}

impl Opening {
    /// Open (or create) the table `tcfg` for `topic` and build its sink.
    async fn sink(self, tcfg: TableConfig, topic: &str) -> Result<TableSink, PipelineError> {
        let Opening {
            cfg,
            registry,
            flush,
        } = self;
        // A registry format without a schema file creates the table from the
        // subject's latest schema.
        let existing = table::load(&tcfg.uri, &cfg.storage)
            .await
            .map_err(Box::new)?;
        let fallback = match (&registry, tcfg.schema.is_none() && existing.is_none()) {
            (Some(registry), true) => Some(registry_schema(registry, &cfg, &tcfg, topic).await?),
            _ => None,
        };
        let opened = table::open_or_create_loaded(&tcfg, &cfg.storage, existing, fallback.as_ref())
            .await
            .map_err(Box::new)?;
        tracing::info!(
            table = %tcfg.uri,
            created = opened.created,
            version = opened.table.version().map_or(-1, |v| v as i64),
            "table open"
        );
        let mut opened = opened;
        if tcfg
            .upsert
            .as_ref()
            .is_some_and(|u| u.strategy == UpsertStrategy::MergeOnRead)
        {
            opened.table = enable_deletion_vectors(opened.table, &tcfg).await?;
        }
        let decoder = Decoder::for_format(
            cfg.decode.format,
            registry.as_ref(),
            opened.schema.clone(),
            cfg.kafka.max_chunk_records,
            cfg.decode.on_incompatible,
        )?
        .with_envelope(
            tcfg.upsert
                .as_ref()
                .map_or_else(Default::default, |u| u.envelope),
            tcfg.upsert.as_ref().and_then(|u| u.source_order.as_deref()),
        )?;
        let transform =
            Transform::new(&tcfg.transform, &opened.schema).map_err(PipelineError::Transform)?;
        let props = table::writer_properties(tcfg.compression, tcfg.row_group_rows);
        let mut log = TableLog::default();
        if let Some(u) = tcfg.upsert.as_ref().filter(|u| u.order_by.is_some()) {
            log.deletes = DeleteMemory::new(&tcfg.uri, &cfg.storage, u.delete_horizon);
        }
        let envelope_of = tcfg.upsert.as_ref().map_or(Envelope::Rows, |u| u.envelope);
        let source_order = tcfg.upsert.as_ref().and_then(|u| u.source_order.clone());
        Ok(TableSink {
            tcfg,
            flush,
            table: opened.table,
            log,
            decoder,
            transform,
            props,
            window: Window::default(),
            inflight: None,
            envelope: EnvelopeDecoder::new(envelope_of, source_order, cfg.kafka.max_chunk_records),
            last_deletes: Default::default(),
        })
    }
}

/// The rows of a table created from `topic`'s latest registry schema (a
/// registry format without a schema file).
async fn registry_schema(
    registry: &Registry,
    cfg: &Config,
    tcfg: &TableConfig,
    topic: &str,
) -> Result<StructType, PipelineError> {
    let subject = cfg.decode.subject_for(topic);
    let latest = registry.latest(&subject).await?;
    let imports = registry.references(&latest).await?;
    let envelope = tcfg
        .upsert
        .as_ref()
        .map_or_else(Default::default, |u| u.envelope);
    let record = crate::decode::record_schema(&latest, &imports)
        .and_then(|envelope_schema| envelope.rows_of(&envelope_schema))
        .map_err(|message| PipelineError::RegistrySchema {
            subject: subject.clone(),
            message,
        })?;
    tracing::info!(%subject, schema_id = latest.id, "creating the table from the registry schema");
    Ok(record)
}

/// A merge-on-read table with deletion vectors enabled (the upgrade
/// `validate` states).
async fn enable_deletion_vectors(
    table: DeltaTable,
    tcfg: &TableConfig,
) -> Result<DeltaTable, PipelineError> {
    crate::sink::dv::ensure_enabled(table)
        .await
        .map_err(|source| {
            Box::new(TableError::Delta {
                uri: tcfg.uri.to_string(),
                source: Box::new(source),
            })
            .into()
        })
}
