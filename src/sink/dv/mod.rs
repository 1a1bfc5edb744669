//! Deletion vectors, the byte-level part of merge-on-read upserts (issue 25):
//! a DV file holding one vector per data file, the descriptors that point into
//! it, the union with a file's earlier vector, and the `remove` + `add` pair
//! that gives a data file its new vector, by the Delta protocol's "Deletion
//! Vectors" rules. The bytes are the kernel's (`StreamingDeletionVectorWriter`);
//! the tests read them back with the kernel's reader.
//!
//! The merge-on-read commit body ([`crate::sink::commit`]) is built from these:
//! [`index`] and [`positions`] find the rows, [`decide`] what to do with them,
//! [`apply`] writes the files.

pub mod apply;
pub mod decide;
pub mod error;
pub mod index;
pub mod positions;

use std::collections::HashMap;

use buoyant_kernel::actions::deletion_vector as kernel_dv;
use buoyant_kernel::actions::deletion_vector_writer::{
    KernelDeletionVector, StreamingDeletionVectorWriter,
};
use deltalake::kernel::{Add, DeletionVectorDescriptor, Remove, StorageType};
use roaring::RoaringTreemap;
use url::Url;

/// Why a deletion vector cannot be written or applied.
#[derive(Debug, thiserror::Error)]
pub enum DvError {
    /// The kernel refused the vector or its descriptor.
    #[error("deletion vector: {0}")]
    Kernel(#[from] buoyant_kernel::Error),
    /// A vector deletes rows the file does not hold.
    #[error(
        "a deletion vector for {path} deletes {deleted} rows, row index {max} the highest, of a file of {rows}"
    )]
    PastTheFile {
        /// The data file.
        path: String,
        /// Rows it deletes.
        deleted: u64,
        /// The highest row index it deletes.
        max: u64,
        /// Physical rows in the file.
        rows: u64,
    },
    /// The data file's statistics are not JSON.
    #[error("the statistics of {path} are not JSON: {source}")]
    Stats {
        /// The data file.
        path: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

/// A DV file: its bytes (to upload), where they go, and a descriptor per
/// vector, in the order given.
#[derive(Debug)]
pub struct DvFile {
    /// The file's path relative to the table root
    /// (`<prefix>/deletion_vector_<uuid>.bin`).
    pub path: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// One per vector written.
    pub descriptors: Vec<DeletionVectorDescriptor>,
}

/// Write `vectors` (deleted row indexes of data files) into one DV file named by
/// `uuid`, under the table-relative directory `prefix` (a short random prefix
/// spreads the files over storage partitions; may be empty).
pub fn write_file(
    prefix: &str,
    uuid: uuid::Uuid,
    vectors: &[RoaringTreemap],
) -> Result<DvFile, DvError> {
    let mut bytes = Vec::new();
    let mut results = Vec::with_capacity(vectors.len());
    let mut writer = StreamingDeletionVectorWriter::new(&mut bytes);
    for v in vectors {
        let mut dv = KernelDeletionVector::new();
        dv.add_deleted_row_indexes(v.iter());
        results.push(writer.write_deletion_vector(dv)?);
    }
    writer.finalize()?;
    let encoded = format!("{prefix}{}", z85::encode(uuid.as_bytes()));
    let descriptors = results
        .into_iter()
        .map(|r| DeletionVectorDescriptor {
            storage_type: StorageType::UuidRelativePath,
            path_or_inline_dv: encoded.clone(),
            offset: Some(r.offset),
            size_in_bytes: r.size_in_bytes,
            cardinality: r.cardinality,
        })
        .collect();
    let name = format!("deletion_vector_{uuid}.bin");
    let path = if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    };
    Ok(DvFile {
        path,
        bytes,
        descriptors,
    })
}

/// Where a descriptor's vector is stored, for a table at `table` (the kernel's
/// reading of the descriptor; `None` for an inline vector).
pub fn location(table: &Url, d: &DeletionVectorDescriptor) -> Result<Option<Url>, DvError> {
    let k = kernel_dv::DeletionVectorDescriptor::try_from(d.clone())?;
    Ok(k.absolute_path(table)?)
}

/// A file's vector after more of its rows are deleted: the union of what it
/// had (if anything) and `deleted`.
pub fn union(
    existing: Option<RoaringTreemap>,
    deleted: impl IntoIterator<Item = u64>,
) -> RoaringTreemap {
    let mut dv = existing.unwrap_or_default();
    dv.extend(deleted);
    dv
}

/// Give the data file of `add` a new deletion vector: a `remove` of the
/// logical file as the table holds it (its path and old vector) and an `add`
/// of the same path with `dv`, in one commit. `rows` is the file's physical row
/// count: the add carries it as an exact `numRecords`, with `tightBounds =
/// false` (its min/max no longer need to be reached by a live row).
pub fn replace(
    add: &Add,
    dv: DeletionVectorDescriptor,
    vector: &RoaringTreemap,
    rows: u64,
    now_ms: i64,
) -> Result<(Remove, Add), DvError> {
    if vector.max().is_some_and(|m| m >= rows) {
        return Err(DvError::PastTheFile {
            path: add.path.clone(),
            deleted: vector.len(),
            max: vector.max().unwrap_or_default(),
            rows,
        });
    }
    let remove = Remove {
        path: add.path.clone(),
        data_change: true,
        deletion_timestamp: Some(now_ms),
        extended_file_metadata: Some(true),
        partition_values: Some(add.partition_values.clone()),
        size: Some(add.size),
        tags: add.tags.clone(),
        deletion_vector: add.deletion_vector.clone(),
        base_row_id: add.base_row_id,
        default_row_commit_version: add.default_row_commit_version,
    };
    let mut stats: serde_json::Map<String, serde_json::Value> = match add.stats.as_deref() {
        Some(s) => serde_json::from_str(s).map_err(|source| DvError::Stats {
            path: add.path.clone(),
            source,
        })?,
        None => serde_json::Map::new(),
    };
    stats.insert("numRecords".into(), rows.into());
    stats.insert("tightBounds".into(), false.into());
    let new = Add {
        deletion_vector: Some(dv),
        data_change: true,
        modification_time: now_ms,
        stats: Some(serde_json::Value::Object(stats).to_string()),
        ..add.clone()
    };
    Ok((remove, new))
}

/// The table property that lets a writer add deletion vectors.
pub const ENABLE: &str = "delta.enableDeletionVectors";

/// Let `table` hold deletion vectors: `delta.enableDeletionVectors = true`,
/// which upgrades its protocol to reader 3 / writer 7 with `deletionVectors`
/// among both feature lists. Irreversible: readers without deletion-vector
/// support can no longer read the table.
pub async fn enable(
    table: deltalake::DeltaTable,
) -> Result<deltalake::DeltaTable, deltalake::DeltaTableError> {
    table
        .set_tbl_properties()
        .with_properties(HashMap::from([(ENABLE.to_owned(), "true".to_owned())]))
        .await
}

/// `table` ready for merge-on-read: enabled ([`enable`]) unless it already
/// is. Replicas starting together may race to enable it; the loser finds it
/// enabled.
pub async fn ensure_enabled(
    table: deltalake::DeltaTable,
) -> Result<deltalake::DeltaTable, deltalake::DeltaTableError> {
    if enabled(&table)? {
        return Ok(table);
    }
    let uri = table.table_url().to_string();
    let mut again = table.clone();
    match enable(table).await {
        Ok(t) => {
            tracing::warn!(table = %uri, "deletion vectors enabled for merge-on-read: the table now needs readers of protocol 3/7 with deletionVectors");
            Ok(t)
        }
        Err(e) => {
            again.update_state().await?;
            if enabled(&again)? { Ok(again) } else { Err(e) }
        }
    }
}

/// Whether `table` may hold deletion vectors: the feature in its protocol and
/// the property set.
pub fn enabled(table: &deltalake::DeltaTable) -> Result<bool, deltalake::DeltaTableError> {
    use buoyant_kernel::table_features::TableFeature;
    let snapshot = table.snapshot()?;
    let protocol = snapshot.protocol();
    let has = |features: Option<&[TableFeature]>| {
        features.is_some_and(|f| f.contains(&TableFeature::DeletionVectors))
    };
    let on = snapshot
        .metadata()
        .configuration()
        .get(ENABLE)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok(on && has(protocol.reader_features()) && has(protocol.writer_features()))
}

#[cfg(test)]
mod tests;
