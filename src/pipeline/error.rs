//! The errors that stop the daemon, and which of them are worth retrying.

use deltalake::DeltaTableError;

use crate::decode::DecodeError;
use crate::decode::registry::RegistryError;
use crate::record::TopicPartition;
use crate::sink::commit::CommitError;
use crate::sink::table::TableError;
use crate::source::SourceError;

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The table could not be opened or created.
    #[error(transparent)]
    Table(#[from] Box<TableError>),
    /// The Kafka consumer failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The decoder could not be built.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A record was rejected and `decode.on_error = "fail"`.
    #[error(
        "record {tp} offset {offset} rejected: {reason} (decode.on_error = \"fail\"; set it to \"skip\" to count and skip such records)"
    )]
    Rejected {
        /// The partition.
        tp: TopicPartition,
        /// The record's offset.
        offset: i64,
        /// Why.
        reason: String,
    },
    /// Writing Parquet failed in a way retrying will not fix.
    #[error("writing to table {uri} failed: {source}")]
    Write {
        /// The table.
        uri: String,
        /// delta-rs' error.
        #[source]
        source: Box<DeltaTableError>,
    },
    /// A commit failed in a way retrying will not fix.
    #[error(transparent)]
    Commit(#[from] Box<CommitError>),
    /// An upsert window's changes could not be joined (segments decoded with
    /// columns that do not fit together).
    #[error("upsert into table {uri}: {source}")]
    Changes {
        /// The table.
        uri: String,
        /// What does not fit.
        #[source]
        source: crate::decode::changes::ChangesError,
    },
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] crate::telemetry::metrics::MetricsError),
    /// The poll thread stopped unexpectedly.
    #[error("the kafka poll thread stopped: {0}")]
    SourceStopped(String),
    /// A topic's table URI cannot be built from the route's template.
    #[error("routing: {0}")]
    Route(String),
    /// A derived column or filter expression cannot be planned.
    #[error("table transform: {0}")]
    Transform(crate::decode::Reason),
    /// The schema registry failed at start.
    #[error("{0}")]
    Registry(#[from] RegistryError),
    /// The registry's schema cannot create the table.
    #[error("cannot create the table from registry subject `{subject}`: {message}")]
    RegistrySchema {
        /// The subject.
        subject: String,
        /// Why.
        message: crate::decode::Reason,
    },
    /// The partitions' ends could not be read for `auto_offset_reset = "latest"`.
    #[error("reading the partitions' ends for auto_offset_reset = latest: {0}")]
    Latest(#[source] crate::source::probe::ProbeError),
    /// A topic's partition count could not be read (upsert tables check it).
    #[error("reading the topic's partition count: {0}")]
    PartitionCount(#[source] crate::source::probe::ProbeError),
    /// An upsert table's topic changed its partition count in a way that can
    /// leave a key twice or out of order.
    #[error("{0}")]
    PartitionsMoved(String),
}

impl PipelineError {
    /// Whether trying again later may succeed: storage, the registry or the
    /// brokers are unavailable. The pipeline retries these with backoff where they
    /// happen outside a commit (opening a table at assignment, reading stored
    /// offsets); anything else stops the daemon with the error.
    pub fn is_retryable(&self) -> bool {
        match self {
            PipelineError::Table(e) => e.is_retryable(),
            PipelineError::Registry(e) => e.is_retryable(),
            PipelineError::Decode(e) => e.is_retryable(),
            PipelineError::Commit(e) => e.is_retryable(),
            PipelineError::Latest(_) | PipelineError::PartitionCount(_) => true,
            // librdkafka retries the brokers itself; what reaches the daemon
            // (a fenced member, refused credentials, no poll thread) is final.
            // The rest are faults of the data, the configuration or the
            // process: retrying the same input does not change them.
            PipelineError::Source(_)
            | PipelineError::Rejected { .. }
            | PipelineError::Write { .. }
            | PipelineError::Changes { .. }
            | PipelineError::Metrics(_)
            | PipelineError::SourceStopped(_)
            | PipelineError::Route(_)
            | PipelineError::Transform(_)
            | PipelineError::RegistrySchema { .. }
            | PipelineError::PartitionsMoved(_) => false,
        }
    }

    /// What the operator should fix, for storage errors that have a known cause
    /// (credentials, permissions, a missing bucket).
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            PipelineError::Table(_) | PipelineError::Commit(_) | PipelineError::Write { .. } => {
                crate::sink::retry::storage_hint(&self.to_string())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage_error(source: deltalake::ObjectStoreError) -> PipelineError {
        PipelineError::Table(Box::new(TableError::Delta {
            uri: "s3://b/t".into(),
            source: Box::new(DeltaTableError::ObjectStore { source }),
        }))
    }

    #[test]
    fn storage_trouble_is_retried_and_refused_credentials_stop_with_a_hint() {
        let outage = storage_error(deltalake::ObjectStoreError::Generic {
            store: "S3",
            source: "error sending request: connection reset".into(),
        });
        assert!(outage.is_retryable());
        let denied = storage_error(deltalake::ObjectStoreError::PermissionDenied {
            path: "t/_delta_log/".into(),
            source: "<Code>AccessDenied</Code> 403 Forbidden".into(),
        });
        assert!(!denied.is_retryable());
        assert!(
            denied
                .hint()
                .is_some_and(|h| h.starts_with("Access denied")),
            "{:?}",
            denied.hint()
        );
        let route = PipelineError::Route("no {topic}".into());
        assert!(!route.is_retryable());
        assert!(route.hint().is_none());
    }
}
