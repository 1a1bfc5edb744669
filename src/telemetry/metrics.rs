//! Prometheus metrics, declared once in [`METRICS`] (name, type, unit, help), and
//! the HTTP endpoint serving them with the health probes.
//!
//! Values are read from [`PipelineStats`] at scrape time: the pipeline only bumps
//! atomics once per chunk or commit, so metrics cost no syscall and no lock per
//! record.
//!
//! | path | answers |
//! |---|---|
//! | `/metrics` | OpenMetrics text |
//! | `/healthz` | 200 while the process runs (liveness) |
//! | `/readyz` | 200 when partitions are assigned, the pipeline is not recovering from a failure, no Parquet upload or commit has been outstanding for more than 10 s (storage failing or unreachable), and no commit has been stuck (in flight for more than twice `commit.max_backoff`, at least 30 s); 503 otherwise (readiness) |
//!
//! # Log levels
//!
//! - `ERROR`: data is at risk or the daemon stops on a fault.
//! - `WARN`: a failure being retried or worked around (rejected record, rewind,
//!   storage error, lost commit race).
//! - `INFO`: lifecycle (table opened or created, partitions assigned or revoked,
//!   each commit with version, rows, files, bytes and duration).
//! - `DEBUG`: per-operation detail for troubleshooting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::telemetry::stats::PipelineStats;

/// How a metric is read from [`PipelineStats`].
#[derive(Clone, Copy)]
enum Source {
    Counter(fn(&PipelineStats) -> &AtomicU64),
    Gauge(fn(&PipelineStats) -> i64),
    Lag,
    CommitHistogram,
}

/// One declared metric.
pub struct MetricDef {
    /// Name without the `tributary_` prefix (counters get `_total` on export).
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Unit, when it has one.
    pub unit: Option<&'static str>,
    source: Source,
}

impl std::fmt::Debug for MetricDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricDef")
            .field("name", &self.name)
            .finish()
    }
}

/// Every metric tributary exports.
pub static METRICS: &[MetricDef] = &[
    MetricDef {
        name: "records_in",
        help: "Records taken from Kafka and accounted for (rows plus rejected)",
        unit: None,
        source: Source::Counter(|s| &s.records_accounted),
    },
    MetricDef {
        name: "rows_out",
        help: "Rows committed to the Delta table",
        unit: None,
        source: Source::Counter(|s| &s.rows_committed),
    },
    MetricDef {
        name: "records_rejected",
        help: "Records that could not be decoded or violated the schema (dead letters)",
        unit: None,
        source: Source::Counter(|s| &s.records_rejected),
    },
    MetricDef {
        name: "committed",
        help: "Parquet bytes committed",
        unit: Some("bytes"),
        source: Source::Counter(|s| &s.bytes_committed),
    },
    MetricDef {
        name: "files_committed",
        help: "Data files committed",
        unit: None,
        source: Source::Counter(|s| &s.files_committed),
    },
    MetricDef {
        name: "commits",
        help: "Delta commits made",
        unit: None,
        source: Source::Counter(|s| &s.commits),
    },
    MetricDef {
        name: "commit_retries",
        help: "Commit attempts retried after transient storage errors",
        unit: None,
        source: Source::Counter(|s| &s.commit_retries),
    },
    MetricDef {
        name: "commit_conflicts",
        help: "Other writers' commits that this process's commits were re-based over (several writers on one table)",
        unit: None,
        source: Source::Counter(|s| &s.commit_conflicts),
    },
    MetricDef {
        name: "stale_commits",
        help: "Commits dropped because another writer advanced the same partitions",
        unit: None,
        source: Source::Counter(|s| &s.stale_commits),
    },
    MetricDef {
        name: "rewinds",
        help: "Rewinds of all partitions to the table's offsets after a failure",
        unit: None,
        source: Source::Counter(|s| &s.rewinds),
    },
    MetricDef {
        name: "rebalances",
        help: "Partition assignments and revocations handled",
        unit: None,
        source: Source::Counter(|s| &s.rebalances),
    },
    MetricDef {
        name: "buffer_records",
        help: "Records in the open (not yet committed) window",
        unit: None,
        source: Source::Gauge(|s| PipelineStats::get(&s.window_records) as i64),
    },
    MetricDef {
        name: "buffer",
        help: "Parquet bytes written to the open window",
        unit: Some("bytes"),
        source: Source::Gauge(|s| PipelineStats::get(&s.window_bytes) as i64),
    },
    MetricDef {
        name: "windows_held",
        help: "Bytes held in memory by all tables' open and committing windows, estimated (bounded by flush.memory_budget)",
        unit: Some("bytes"),
        source: Source::Gauge(|s| PipelineStats::get(&s.windows_held_bytes) as i64),
    },
    MetricDef {
        name: "windows_flushed_early",
        help: "Windows committed early because all windows together reached flush.memory_budget",
        unit: None,
        source: Source::Counter(|s| &s.windows_flushed_early),
    },
    MetricDef {
        name: "assigned_partitions",
        help: "Kafka partitions assigned to this process",
        unit: None,
        source: Source::Gauge(|s| PipelineStats::get(&s.assigned_partitions) as i64),
    },
    MetricDef {
        name: "ready",
        help: "1 when partitions are assigned, the pipeline is not recovering, and storage calls return",
        unit: None,
        source: Source::Gauge(|s| i64::from(s.is_ready())),
    },
    MetricDef {
        name: "table_version",
        help: "Last Delta table version committed by this process",
        unit: None,
        source: Source::Gauge(|s| PipelineStats::get(&s.table_version) as i64),
    },
    MetricDef {
        name: "partition_lag",
        help: "Records in Kafka not yet in the table: high watermark - (stored offset + 1)",
        unit: None,
        source: Source::Lag,
    },
    MetricDef {
        name: "commit_duration",
        help: "Wall time of a Delta commit, from finalizing files to the log entry",
        unit: Some("seconds"),
        source: Source::CommitHistogram,
    },
];

#[derive(Debug)]
struct Collector(Arc<PipelineStats>);

fn unit(u: &str) -> Unit {
    match u {
        "bytes" => Unit::Bytes,
        "seconds" => Unit::Seconds,
        other => Unit::Other(other.to_owned()),
    }
}

impl prometheus_client::collector::Collector for Collector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        for m in METRICS {
            let name = format!("tributary_{}", m.name);
            let u = m.unit.map(unit);
            match m.source {
                Source::Counter(f) => {
                    let c = ConstCounter::new(PipelineStats::get(f(s)));
                    let e =
                        encoder.encode_descriptor(&name, m.help, u.as_ref(), c.metric_type())?;
                    c.encode(e)?;
                }
                Source::Gauge(f) => {
                    let g = ConstGauge::new(f(s));
                    let e =
                        encoder.encode_descriptor(&name, m.help, u.as_ref(), g.metric_type())?;
                    g.encode(e)?;
                }
                Source::Lag => {
                    let mut e =
                        encoder.encode_descriptor(&name, m.help, u.as_ref(), MetricType::Gauge)?;
                    for (tp, lag) in s.lag() {
                        let labels = [
                            ("topic", tp.topic.to_string()),
                            ("partition", tp.partition.to_string()),
                        ];
                        let fe = e.encode_family(&labels)?;
                        ConstGauge::new(lag).encode(fe)?;
                    }
                }
                Source::CommitHistogram => {
                    let e = encoder.encode_descriptor(
                        &name,
                        m.help,
                        u.as_ref(),
                        MetricType::Histogram,
                    )?;
                    s.commit_seconds.encode(e)?;
                }
            }
        }
        Ok(())
    }
}

/// A registry exporting `stats`.
pub fn registry(stats: Arc<PipelineStats>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(Collector(stats)));
    r
}

/// Render the registry in OpenMetrics text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String");
    out
}

/// Errors starting the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error(
        "cannot listen on {addr} for /metrics and health probes: {source} (check observability.listen)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A running endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `addr`.
pub async fn serve(addr: SocketAddr, stats: Arc<PipelineStats>) -> Result<Endpoint, MetricsError> {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let registry = Arc::new(registry(stats.clone()));
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        render(&registry),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = stats.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
    Ok(Endpoint { addr: bound, task })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::TopicPartition;

    /// The shipped Grafana dashboard only queries series tributary exports.
    #[test]
    fn dashboard_queries_only_declared_metrics() {
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../../deploy/grafana/tributary.json")).unwrap();
        let re = regex::Regex::new(r"tributary_[a-z_]+").unwrap();
        let exported: Vec<String> = METRICS
            .iter()
            .flat_map(|m| {
                let base = match m.unit {
                    Some(u) => format!("tributary_{}_{u}", m.name),
                    None => format!("tributary_{}", m.name),
                };
                ["", "_total", "_bucket", "_count", "_sum"].map(|s| format!("{base}{s}"))
            })
            .collect();
        let mut seen = 0;
        for panel in dash["panels"].as_array().unwrap() {
            for t in panel["targets"].as_array().unwrap() {
                for m in re.find_iter(t["expr"].as_str().unwrap()) {
                    seen += 1;
                    assert!(
                        exported.iter().any(|e| e == m.as_str()),
                        "dashboard queries unknown {}",
                        m.as_str()
                    );
                }
            }
        }
        assert!(seen >= 15, "dashboard references {seen} series");
    }

    #[test]
    fn every_declared_metric_is_exported_with_help() {
        let stats = Arc::new(PipelineStats::default());
        PipelineStats::add(&stats.records_accounted, 7);
        stats.commit_seconds.observe(0.2);
        stats.set_committed([(TopicPartition::new("t", 0), 9)]);
        stats.set_high_watermarks([(TopicPartition::new("t", 0), 15)]);
        let text = render(&registry(stats));
        for m in METRICS {
            let name = format!("tributary_{}", m.name);
            assert!(
                text.contains(&format!("# HELP {name}")),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.contains("tributary_records_in_total 7"), "{text}");
        assert!(
            text.contains("tributary_partition_lag{topic=\"t\",partition=\"0\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("tributary_commit_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("tributary_committed_bytes_total 0"), "{text}");
    }
}
