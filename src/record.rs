//! The unit of data between the Kafka poll thread and the pipeline: a
//! [`RecordChunk`], many records in one contiguous buffer.
//!
//! Copying each record's key and value once out of librdkafka's buffers into one
//! `Vec<u8>` per chunk costs one allocation per chunk instead of several per record,
//! and lets the decoder read values straight from that buffer.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

/// A Kafka topic and partition.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: i32,
}

impl TopicPartition {
    /// Construct.
    pub fn new(topic: impl Into<Arc<str>>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Debug for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// Position of one record inside a [`RecordChunk`].
#[derive(Debug, Clone)]
pub struct RecordMeta {
    /// Index into [`RecordChunk::partitions`].
    pub part: u32,
    /// Kafka offset.
    pub offset: i64,
    /// Record timestamp in milliseconds since the epoch, when the broker gave one.
    pub timestamp_ms: Option<i64>,
    /// Byte range of the key in [`RecordChunk::data`].
    pub key: Option<Range<usize>>,
    /// Byte range of the value in [`RecordChunk::data`]; `None` for a tombstone.
    pub value: Option<Range<usize>>,
    /// Range into [`RecordChunk::headers`].
    pub headers: Range<usize>,
}

/// One record header.
#[derive(Debug, Clone)]
pub struct HeaderMeta {
    /// Header key.
    pub key: String,
    /// Byte range of the value in [`RecordChunk::data`]; `None` for a null value.
    pub value: Option<Range<usize>>,
}

/// A partition that records in a chunk belong to, with the assignment epoch the
/// poll thread tagged them with.
#[derive(Debug, Clone)]
pub struct ChunkPartition {
    /// The partition.
    pub tp: TopicPartition,
    /// Epoch of the assignment or seek the records were fetched under. The pipeline
    /// drops records whose epoch is not the partition's current one: they were
    /// fetched before a rewind and are being re-read.
    pub epoch: u64,
}

/// Records polled in one burst, in poll order.
#[derive(Debug, Default, Clone)]
pub struct RecordChunk {
    /// Partitions referenced by [`RecordMeta::part`].
    pub partitions: Vec<ChunkPartition>,
    /// Records.
    pub records: Vec<RecordMeta>,
    /// Headers referenced by [`RecordMeta::headers`].
    pub headers: Vec<HeaderMeta>,
    /// Keys, values and header values back to back.
    pub data: Vec<u8>,
}

impl RecordChunk {
    /// The value bytes of a record.
    pub fn value(&self, r: &RecordMeta) -> Option<&[u8]> {
        r.value.clone().map(|v| &self.data[v])
    }

    /// The key bytes of a record.
    pub fn key(&self, r: &RecordMeta) -> Option<&[u8]> {
        r.key.clone().map(|k| &self.data[k])
    }

    /// Copy `bytes` into the data buffer and return their range.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        start..self.data.len()
    }

    /// Index of `tp` with `epoch` in [`Self::partitions`], adding it if absent.
    pub fn partition_index(&mut self, tp: &TopicPartition, epoch: u64) -> u32 {
        if let Some(i) = self
            .partitions
            .iter()
            .position(|p| p.epoch == epoch && &p.tp == tp)
        {
            return i as u32;
        }
        self.partitions.push(ChunkPartition {
            tp: tp.clone(),
            epoch,
        });
        (self.partitions.len() - 1) as u32
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether the chunk holds no records.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of key, value and header data.
    pub fn data_bytes(&self) -> usize {
        self.data.len()
    }

    /// Append records of `tp` at `epoch` with the given offsets (each value `{}`),
    /// for unit tests of what the pipeline admits and accounts.
    #[cfg(test)]
    pub(crate) fn push_offsets(
        &mut self,
        tp: &TopicPartition,
        epoch: u64,
        offsets: impl IntoIterator<Item = i64>,
    ) {
        let part = self.partition_index(tp, epoch);
        for offset in offsets {
            let value = Some(self.push_bytes(b"{}"));
            self.records.push(RecordMeta {
                part,
                offset,
                timestamp_ms: None,
                key: None,
                value,
                headers: 0..0,
            });
        }
    }

    /// Build a chunk from plain values, for tests and benchmarks.
    pub fn from_values<'a>(
        tp: &TopicPartition,
        first_offset: i64,
        values: impl IntoIterator<Item = &'a [u8]>,
    ) -> Self {
        let mut chunk = Self::default();
        let part = chunk.partition_index(tp, 0);
        for (i, v) in values.into_iter().enumerate() {
            let value = Some(chunk.push_bytes(v));
            chunk.records.push(RecordMeta {
                part,
                offset: first_offset + i as i64,
                timestamp_ms: Some(1_700_000_000_000 + i as i64),
                key: None,
                value,
                headers: 0..0,
            });
        }
        chunk
    }
}
