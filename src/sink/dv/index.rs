//! The key index of a merge-on-read table: per data file, a fingerprint of
//! every row's key (and, with `order_by`, the row's order value), read once
//! from the file's key columns and kept in memory. Data files never change
//! once written, so an entry stays true for as long as its file is in the
//! table; what changes is the file's deletion vector, read again when its
//! descriptor changes. Files another writer added (a compaction, a foreign
//! writer) are read when first seen; files no longer in the table are dropped.
//!
//! A single integer key is its own fingerprint (exact, 8 bytes a row); any
//! other key is fingerprinted by the 128-bit XXH3 of its row encoding (16
//! bytes a row; two keys of one table share a fingerprint with a probability
//! below 10^-20 at a billion rows).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use deltalake::DeltaTable;
use deltalake::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Int64Type};
use deltalake::arrow::row::{RowConverter, SortField};
use deltalake::parquet::arrow::ProjectionMask;
// parquet 59.3 deprecates its object-store reader in favour of one's own
// `AsyncFileReader`; delta-rs 1.1.3 still reads its data files with it.
#[allow(deprecated)]
use deltalake::parquet::arrow::async_reader::ParquetObjectReader;
use deltalake::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use futures::TryStreamExt as _;
use roaring::RoaringTreemap;

use super::error::LocateError;

/// Keys' fingerprints, a row each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fingerprints {
    /// A single integer key column: the values themselves.
    Int(Vec<i64>),
    /// Any other key: XXH3-128 of each row's encoding.
    Hash(Vec<u128>),
}

impl Fingerprints {
    /// Rows fingerprinted.
    pub fn len(&self) -> usize {
        match self {
            Fingerprints::Int(v) => v.len(),
            Fingerprints::Hash(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Fingerprints::Int(v) => v.capacity() * 8,
            Fingerprints::Hash(v) => v.capacity() * 16,
        }
    }
}

/// Whether keys of these types are fingerprinted by value.
fn by_value(types: &[DataType]) -> bool {
    matches!(
        types,
        [DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32]
    )
}

/// The fingerprints of `columns` (the key columns, in the keys' types).
pub fn fingerprint(columns: &[ArrayRef]) -> Result<Fingerprints, LocateError> {
    let types: Vec<DataType> = columns.iter().map(|c| c.data_type().clone()).collect();
    if by_value(&types) {
        let c = cast(&columns[0], &DataType::Int64).map_err(LocateError::Keys)?;
        return Ok(Fingerprints::Int(
            c.as_primitive::<Int64Type>().values().to_vec(),
        ));
    }
    let converter = RowConverter::new(types.into_iter().map(SortField::new).collect())
        .map_err(LocateError::Keys)?;
    let rows = converter
        .convert_columns(columns)
        .map_err(LocateError::Keys)?;
    Ok(Fingerprints::Hash(
        rows.iter()
            .map(|r| twox_hash::XxHash3_128::oneshot(r.as_ref()))
            .collect(),
    ))
}

/// What the index holds of one data file.
#[derive(Debug)]
pub struct FileKeys {
    /// The key types the fingerprints were made in.
    pub types: Vec<DataType>,
    /// A fingerprint per physical row.
    pub keys: Fingerprints,
    /// With `order_by`: each row's order value (null where the file lacks the
    /// column).
    pub order: Option<ArrayRef>,
}

impl FileKeys {
    /// The file's physical rows.
    pub fn rows(&self) -> u64 {
        self.keys.len() as u64
    }

    fn bytes(&self) -> usize {
        self.keys.bytes() + self.order.as_ref().map_or(0, |o| o.get_array_memory_size())
    }
}

/// A file's deletion vector as last read, by its descriptor.
#[derive(Debug)]
struct Vector {
    descriptor: String,
    deleted: Arc<RoaringTreemap>,
}

/// The key index of one table (shared by its commits; see the module).
#[derive(Debug, Default)]
pub struct KeyIndex {
    files: Mutex<HashMap<String, Arc<FileKeys>>>,
    vectors: Mutex<HashMap<String, Vector>>,
}

/// Files and bytes an index holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexSize {
    /// Data files indexed.
    pub files: usize,
    /// Rows indexed.
    pub rows: u64,
    /// Bytes of fingerprints and order values.
    pub bytes: usize,
}

impl KeyIndex {
    /// What the index holds now.
    pub fn size(&self) -> IndexSize {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        IndexSize {
            files: files.len(),
            rows: files.values().map(|f| f.rows()).sum(),
            bytes: files.values().map(|f| f.bytes()).sum(),
        }
    }

    /// The file's entry, if held in these key types and with the order
    /// column asked for.
    pub(super) fn get(
        &self,
        path: &str,
        types: &[DataType],
        ordered: bool,
    ) -> Option<Arc<FileKeys>> {
        let files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files
            .get(path)
            .filter(|f| f.types == types && f.order.is_some() == ordered)
            .cloned()
    }

    pub(super) fn put(&self, path: &str, keys: Arc<FileKeys>) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.insert(path.to_owned(), keys);
    }

    /// The deletion vector of `path` under `descriptor`, if read before.
    pub(super) fn vector(&self, path: &str, descriptor: &str) -> Option<Arc<RoaringTreemap>> {
        let vectors = self.vectors.lock().unwrap_or_else(|p| p.into_inner());
        vectors
            .get(path)
            .filter(|v| v.descriptor == descriptor)
            .map(|v| v.deleted.clone())
    }

    pub(super) fn put_vector(&self, path: &str, descriptor: String, deleted: Arc<RoaringTreemap>) {
        let mut vectors = self.vectors.lock().unwrap_or_else(|p| p.into_inner());
        vectors.insert(
            path.to_owned(),
            Vector {
                descriptor,
                deleted,
            },
        );
    }

    /// Forget the files not in `live` (removed by a compaction, or replaced).
    pub(super) fn retain(&self, live: &std::collections::HashSet<&str>) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        files.retain(|p, _| live.contains(p.as_str()));
        let mut vectors = self.vectors.lock().unwrap_or_else(|p| p.into_inner());
        vectors.retain(|p, _| live.contains(p.as_str()));
    }
}

/// A data file's partition values (the columns Hive-style partitioning keeps
/// out of the file), by column.
pub(super) type Partition = HashMap<String, Option<String>>;

/// A data file to read: its path and its partition values.
#[derive(Debug, Clone, Copy)]
pub(super) struct Source<'a> {
    /// The path.
    pub(super) path: &'a str,
    /// Its partition values.
    pub(super) partition: &'a Partition,
}

/// Read the key columns (and the order column) of one data file. A key
/// column the table partitions by is not in the file: its value is the
/// file's partition value, the same on every row.
pub(super) async fn read_file(
    table: &DeltaTable,
    source: Source<'_>,
    names: &[String],
    types: &[DataType],
    order_by: Option<&str>,
) -> Result<FileKeys, LocateError> {
    let path = source.path;
    let stored: Vec<String> = names
        .iter()
        .filter(|n| !source.partition.contains_key(*n))
        .cloned()
        .collect();
    let (batches, rows, has_order) = read_columns(table, path, &stored, order_by).await?;
    let keys = names
        .iter()
        .zip(types)
        .map(|(n, t)| match source.partition.get(n) {
            Some(value) => {
                let values = StringArray::from(vec![value.as_deref(); rows]);
                cast(&values, t).map_err(|e| column_err(path, n, e.to_string()))
            }
            None => concat_column(&batches, path, n, Some(t)),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let order = match order_by {
        Some(o) if has_order && rows > 0 => Some(concat_column(&batches, path, o, None)?),
        Some(_) => Some(deltalake::arrow::array::new_null_array(
            &DataType::Null,
            rows,
        )),
        None => None,
    };
    Ok(FileKeys {
        types: types.to_vec(),
        keys: fingerprint(&keys)?,
        order,
    })
}

fn column_err(path: &str, column: &str, problem: String) -> LocateError {
    LocateError::Column {
        path: path.to_owned(),
        column: column.to_owned(),
        problem,
    }
}

/// The batches of `path` holding the key columns `names` and, when the file
/// has it, the order column (a file written before `order_by` was set has
/// not: its rows are older than any that has one); and the file's rows.
async fn read_columns(
    table: &DeltaTable,
    path: &str,
    names: &[String],
    order_by: Option<&str>,
) -> Result<(Vec<RecordBatch>, usize, bool), LocateError> {
    let parquet_err = |source| LocateError::Parquet {
        path: path.to_owned(),
        source,
    };
    let store = table.log_store().object_store(None);
    #[allow(deprecated)]
    let reader = ParquetObjectReader::new(store, deltalake::Path::from(path));
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(parquet_err)?;
    let mut roots = names
        .iter()
        .map(|n| {
            builder
                .schema()
                .index_of(n)
                .map_err(|_| column_err(path, n, "not in the file".into()))
        })
        .collect::<Result<Vec<usize>, _>>()?;
    let order_at = order_by.and_then(|o| builder.schema().index_of(o).ok());
    roots.extend(order_at);
    let rows = usize::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or_default();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let mut stream = builder.with_projection(mask).build().map_err(parquet_err)?;
    let mut batches: Vec<RecordBatch> = Vec::new();
    while let Some(batch) = stream.try_next().await.map_err(parquet_err)? {
        batches.push(batch);
    }
    Ok((batches, rows, order_at.is_some()))
}

/// Column `name` of all `batches` as one array, cast to `want` if given.
fn concat_column(
    batches: &[RecordBatch],
    path: &str,
    name: &str,
    want: Option<&DataType>,
) -> Result<ArrayRef, LocateError> {
    let parts = batches
        .iter()
        .map(|b| {
            let c = b
                .column_by_name(name)
                .ok_or_else(|| column_err(path, name, "not read".into()))?;
            match want {
                Some(t) if c.data_type() != t => {
                    cast(c, t).map_err(|e| column_err(path, name, e.to_string()))
                }
                _ => Ok(c.clone()),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
    match (refs.is_empty(), want) {
        (true, Some(t)) => Ok(deltalake::arrow::array::new_empty_array(t)),
        _ => deltalake::arrow::compute::concat(&refs)
            .map_err(|e| column_err(path, name, e.to_string())),
    }
}
