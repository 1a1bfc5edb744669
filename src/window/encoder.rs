//! A flush window's Parquet writer, run on a task of its own.
//!
//! The pipeline task decodes the next chunk while this task encodes the batches
//! before it and streams the files to storage, so decoding and encoding run on both
//! cores and an upload part waiting on storage does not stall decoding. The channel
//! between them is bounded: when the encoder falls behind, the pipeline waits on
//! it, the chunk channel fills and the poll thread pauses its partitions. Memory
//! stays bounded by configuration, as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use deltalake::DeltaTableError;
use deltalake::arrow::array::RecordBatch;
use deltalake::kernel::Add;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::telemetry::stats::{PipelineStats, StorageCall};

/// Why the encoder of a window ended without its files.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    /// The window was discarded (aborted) before it was finished.
    #[error("the window was discarded")]
    Discarded,
    /// The encoder task hung up without an error of its own.
    #[error("the Parquet encoder task stopped early")]
    StoppedEarly,
    /// Its error was already returned at an earlier call.
    #[error("the Parquet encoder already failed for this window")]
    AlreadyFailed,
    /// The task panicked or was cancelled.
    #[error("the Parquet encoder task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

/// Batches queued between the pipeline and the encoder. Two keep the encoder busy
/// while the pipeline decodes; more would only hold more memory.
const QUEUE_DEPTH: usize = 2;

/// The open window's writer: batches go in, Delta `Add` actions come out at flush.
pub struct WindowWriter {
    batches: Option<mpsc::Sender<RecordBatch>>,
    task: Option<JoinHandle<Result<RecordBatchWriter, DeltaTableError>>>,
    encoded: Arc<AtomicU64>,
    /// Set when the window is discarded: the encoder skips what is still queued.
    aborted: Arc<AtomicBool>,
}

impl std::fmt::Debug for WindowWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowWriter")
            .field("open", &self.batches.is_some())
            .field("encoded_bytes", &self.encoded_bytes())
            .finish()
    }
}

impl WindowWriter {
    /// Start the encoder task for `writer`. Writes mark `stats.upload_since_ms`
    /// while they run (parts stream to storage during writes), for readiness.
    pub fn start(mut writer: RecordBatchWriter, stats: Arc<PipelineStats>) -> Self {
        let (tx, mut rx) = mpsc::channel::<RecordBatch>(QUEUE_DEPTH);
        let encoded = Arc::new(AtomicU64::new(0));
        let bytes = encoded.clone();
        let aborted = Arc::new(AtomicBool::new(false));
        let skip = aborted.clone();
        let task = tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                if skip.load(Ordering::Acquire) {
                    break;
                }
                let call = StorageCall::begin(&stats.upload_since_ms);
                let written = writer.write(batch).await;
                drop(call);
                if let Err(e) = written {
                    // Abort the multipart uploads this window started.
                    writer.reset();
                    return Err(e);
                }
                bytes.store(writer.buffer_len() as u64, Ordering::Relaxed);
            }
            if skip.load(Ordering::Acquire) {
                // Abort the multipart uploads of the discarded window.
                writer.reset();
                return Err(crate::fault::permanent(EncoderError::Discarded));
            }
            Ok(writer)
        });
        Self {
            batches: Some(tx),
            task: Some(task),
            encoded,
            aborted,
        }
    }

    /// Queue a batch for encoding; waits while the queue is full. An error means the
    /// encoder failed (on this batch or an earlier one) and the window is lost.
    pub async fn write(&mut self, batch: RecordBatch) -> Result<(), DeltaTableError> {
        if let Some(tx) = &self.batches
            && tx.send(batch).await.is_ok()
        {
            return Ok(());
        }
        // The encoder hung up: it failed. Its error says why.
        self.batches = None;
        match self.join().await {
            Ok(mut writer) => {
                writer.reset();
                Err(crate::fault::permanent(EncoderError::StoppedEarly))
            }
            Err(e) => Err(e),
        }
    }

    /// Approximate Parquet bytes encoded so far in this window (batches still queued
    /// are not counted yet).
    pub fn encoded_bytes(&self) -> u64 {
        self.encoded.load(Ordering::Relaxed)
    }

    /// Wait until every queued batch is encoded, then finalize the files and return
    /// their `Add` actions.
    pub async fn finish(mut self) -> Result<Vec<Add>, DeltaTableError> {
        self.batches = None;
        self.join().await?.flush().await
    }

    /// Discard the window: the encoder skips the batches still queued, aborts its
    /// uploads and ends, in the background.
    pub fn abort(mut self) {
        self.aborted.store(true, Ordering::Release);
        self.batches = None;
        // Detached: the task resets the writer itself when it sees the flag.
        drop(self.task.take());
    }

    /// Wait for the encoder to end and take its writer; an error if it failed, now
    /// or at an earlier join.
    async fn join(&mut self) -> Result<RecordBatchWriter, DeltaTableError> {
        let Some(task) = self.task.take() else {
            return Err(crate::fault::permanent(EncoderError::AlreadyFailed));
        };
        match task.await {
            Ok(result) => result,
            Err(e) => Err(crate::fault::permanent(EncoderError::Task(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Int64Array, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    use deltalake::kernel::{DataType as DeltaType, PrimitiveType, StructField};

    /// A writer for a new two-column table in `dir`.
    async fn writer(dir: &std::path::Path) -> RecordBatchWriter {
        let table = deltalake::operations::create::CreateBuilder::new()
            .with_location(dir.to_str().unwrap())
            .with_columns([
                StructField::new("id", DeltaType::Primitive(PrimitiveType::Long), false),
                StructField::new("name", DeltaType::Primitive(PrimitiveType::String), true),
            ])
            .await
            .unwrap();
        crate::sink::table::new_writer(
            &table,
            crate::sink::table::writer_properties(crate::sink::Compression::Snappy, 1024),
            u64::MAX,
        )
        .unwrap()
    }

    fn batch(ids: std::ops::Range<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let names: Vec<String> = ids.clone().map(|i| format!("n{i}")).collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(ids)),
                Arc::new(StringArray::from_iter_values(names)),
            ],
        )
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_queued_batch_is_in_the_files_at_finish() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path()).await;
        let stats = Arc::new(PipelineStats::default());
        let mut w = WindowWriter::start(writer, stats.clone());
        for i in 0..20 {
            w.write(batch(i * 500..(i + 1) * 500)).await.unwrap();
        }
        let adds = w.finish().await.unwrap();
        let rows: i64 = adds
            .iter()
            .map(|a| {
                let stats: serde_json::Value =
                    serde_json::from_str(a.stats.as_deref().unwrap()).unwrap();
                stats["numRecords"].as_i64().unwrap()
            })
            .sum();
        assert_eq!(rows, 10_000);
        assert_eq!(stats.upload_since_ms.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_batch_fails_the_window_with_the_writers_error() {
        let dir = tempfile::tempdir().unwrap();
        let writer = writer(dir.path()).await;
        let mut w = WindowWriter::start(writer, Arc::new(PipelineStats::default()));
        w.write(batch(0..10)).await.unwrap();
        // A batch the table's schema does not take: `id` is not nullable.
        let bad_schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Utf8, true)]));
        let bad = RecordBatch::try_new(
            bad_schema,
            vec![Arc::new(StringArray::from_iter_values(["a"]))],
        )
        .unwrap();
        w.write(bad).await.expect("queued; it fails in the encoder");
        // Within a queue's worth of writes the failure shows, with the writer's own
        // error, and the window never finishes as if nothing happened.
        let mut first_error = None;
        for i in 0..(QUEUE_DEPTH as i64 + 2) {
            if let Err(e) = w.write(batch(i * 10..(i + 1) * 10)).await {
                first_error = Some(e);
                break;
            }
        }
        let err = first_error.expect("a write after the failed batch reports the failure");
        assert!(
            !err.to_string().contains("encoder"),
            "want the writer's error: {err}"
        );
        assert!(w.finish().await.is_err());
    }
}
