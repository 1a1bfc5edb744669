//! How records are decoded: the format, what to do with bad records, limits.

use serde::Deserialize;

/// Policy for records that cannot be decoded or violate the schema.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Count and log the record with its reason; its offset counts as processed.
    #[default]
    Skip,
    /// Stop the pipeline with an error naming the record.
    Fail,
}

/// Validated `[decode]`.
#[derive(Debug, Clone)]
pub struct DecodeConfig {
    /// Value format.
    pub format: Format,
    /// Bad-record policy.
    pub on_error: OnError,
    /// Incompatible-schema policy.
    pub on_incompatible: OnError,
    /// Subject template for table creation.
    pub subject: String,
    /// The registry, for registry formats.
    pub registry: Option<crate::decode::registry::RegistryConfig>,
    /// Larger record values are rejected.
    pub max_record_bytes: u64,
}

impl DecodeConfig {
    /// The registry subject for `topic`.
    pub fn subject_for(&self, topic: &str) -> String {
        self.subject.replace("{topic}", topic)
    }
}

/// Record value format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JSON objects, one per record, against the table schema.
    Json,
    /// Avro in the Confluent wire format.
    Avro,
    /// JSON in the Confluent wire format, described by a registered JSON Schema.
    JsonSchema,
    /// Protobuf in the Confluent wire format (with the message-index array).
    Protobuf,
}
