//! Where a window's keys live: the data file and physical row index of each
//! live row whose key the window changes, the positions its deletion vectors
//! delete. One pass over the key columns of the table's data files (only those
//! columns are read), honouring each file's deletion vector; the row index is
//! the row's place in its file from 0, as the protocol defines it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use buoyant_kernel::actions::deletion_vector as kernel_dv;
use buoyant_kernel_engine::executor::tokio::TokioBackgroundExecutor;
use buoyant_kernel_engine::filesystem::ObjectStoreStorageHandler;
use deltalake::arrow::array::{ArrayRef, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::row::{RowConverter, SortField};
use deltalake::parquet::arrow::ProjectionMask;
// parquet 59.3 deprecates its object-store reader in favour of one's own
// `AsyncFileReader`; delta-rs 1.1.3 still reads its data files with it.
#[allow(deprecated)]
use deltalake::parquet::arrow::async_reader::ParquetObjectReader;
use deltalake::parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use deltalake::{DeltaTable, DeltaTableError};
use futures::TryStreamExt as _;
use roaring::RoaringTreemap;
use url::Url;

/// Why positions cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// Reading the table's log or a file failed.
    #[error(transparent)]
    Delta(#[from] DeltaTableError),
    /// A data file cannot be read as Parquet.
    #[error("reading data file {path}: {source}")]
    Parquet {
        /// The file.
        path: String,
        /// Parquet's error.
        #[source]
        source: deltalake::parquet::errors::ParquetError,
    },
    /// A key column is missing from a data file, or not of a key's type.
    #[error("data file {path}: key column `{column}`: {problem}")]
    Column {
        /// The file.
        path: String,
        /// The column.
        column: String,
        /// What is wrong.
        problem: String,
    },
    /// A file's deletion vector cannot be read.
    #[error("the deletion vector of {path}: {source}")]
    Vector {
        /// The file.
        path: String,
        /// The kernel's error.
        #[source]
        source: buoyant_kernel::Error,
    },
    /// The keys themselves cannot be encoded for comparison.
    #[error("the window's keys: {0}")]
    Keys(#[source] deltalake::arrow::error::ArrowError),
}

/// The live rows of one data file whose keys a window changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Their row indexes.
    pub rows: RoaringTreemap,
    /// The file's physical rows (read, so exact whatever its stats say).
    pub physical: u64,
    /// The rows its current deletion vector deletes (read once, here).
    pub deleted: RoaringTreemap,
}

/// The live rows of `table` whose key is one of `keys` (a batch of the key
/// columns, one row per key), per data file path.
pub async fn locate(
    table: &DeltaTable,
    keys: &RecordBatch,
) -> Result<HashMap<String, Found>, LocateError> {
    let names: Vec<String> = keys
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let fields: Vec<SortField> = keys
        .columns()
        .iter()
        .map(|c| SortField::new(c.data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields).map_err(LocateError::Keys)?;
    let wanted: HashSet<Vec<u8>> = {
        let rows = converter
            .convert_columns(keys.columns())
            .map_err(LocateError::Keys)?;
        rows.iter().map(|r| r.as_ref().to_vec()).collect()
    };
    let snapshot = table.snapshot()?;
    let files: Vec<(String, Option<deltalake::kernel::DeletionVectorDescriptor>)> = snapshot
        .log_data()
        .iter()
        .map(|f| (f.path().into_owned(), f.deletion_vector_descriptor()))
        .collect();
    let mut found = HashMap::new();
    for (path, dv) in files {
        let deleted = match dv {
            Some(d) => read_vector(table, &path, d).await?,
            None => RoaringTreemap::new(),
        };
        let cx = FileScan {
            table,
            path: &path,
            names: &names,
            keys,
            converter: &converter,
            wanted: &wanted,
            deleted: &deleted,
        };
        let (rows, physical) = cx.scan().await?;
        if !rows.is_empty() {
            found.insert(
                path,
                Found {
                    rows,
                    physical,
                    deleted,
                },
            );
        }
    }
    Ok(found)
}

/// A file's deletion vector, read by the kernel through the table's store.
pub async fn read_vector(
    table: &DeltaTable,
    path: &str,
    d: deltalake::kernel::DeletionVectorDescriptor,
) -> Result<RoaringTreemap, LocateError> {
    let vector_err = |source| LocateError::Vector {
        path: path.to_owned(),
        source,
    };
    let d = kernel_dv::DeletionVectorDescriptor::try_from(d).map_err(vector_err)?;
    let root: Url = table.table_url().clone();
    let store = table.log_store().root_object_store(None);
    tokio::task::spawn_blocking(move || {
        let storage = Arc::new(ObjectStoreStorageHandler::new(
            store,
            Arc::new(TokioBackgroundExecutor::new()),
        ));
        d.read(storage, &root)
    })
    .await
    .map_err(|e| vector_err(buoyant_kernel::Error::generic(e.to_string())))?
    .map_err(vector_err)
}

/// One data file's pass.
struct FileScan<'a> {
    table: &'a DeltaTable,
    path: &'a str,
    names: &'a [String],
    keys: &'a RecordBatch,
    converter: &'a RowConverter,
    wanted: &'a HashSet<Vec<u8>>,
    deleted: &'a RoaringTreemap,
}

impl FileScan<'_> {
    /// The matching live rows, and the file's physical row count.
    async fn scan(&self) -> Result<(RoaringTreemap, u64), LocateError> {
        let parquet_err = |source| LocateError::Parquet {
            path: self.path.to_owned(),
            source,
        };
        let store = self.table.log_store().object_store(None);
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(store, deltalake::Path::from(self.path));
        let builder = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(parquet_err)?;
        let roots = self
            .names
            .iter()
            .map(|n| {
                builder
                    .schema()
                    .index_of(n)
                    .map_err(|_| LocateError::Column {
                        path: self.path.to_owned(),
                        column: n.clone(),
                        problem: "not in the file".into(),
                    })
            })
            .collect::<Result<Vec<usize>, _>>()?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let mut stream = builder.with_projection(mask).build().map_err(parquet_err)?;
        let (mut rows, mut at) = (RoaringTreemap::new(), 0u64);
        while let Some(batch) = stream.try_next().await.map_err(parquet_err)? {
            let columns = self.conform(&batch)?;
            let converted = self
                .converter
                .convert_columns(&columns)
                .map_err(LocateError::Keys)?;
            for (i, r) in converted.iter().enumerate() {
                let index = at + i as u64;
                if !self.deleted.contains(index) && self.wanted.contains(r.as_ref()) {
                    rows.insert(index);
                }
            }
            at += batch.num_rows() as u64;
        }
        Ok((rows, at))
    }

    /// The file's key columns in the keys' order and types.
    fn conform(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>, LocateError> {
        self.names
            .iter()
            .zip(self.keys.columns())
            .map(|(n, k)| {
                let column_err = |problem: String| LocateError::Column {
                    path: self.path.to_owned(),
                    column: n.clone(),
                    problem,
                };
                let c = batch
                    .column_by_name(n)
                    .ok_or_else(|| column_err("not read".into()))?;
                if c.data_type() == k.data_type() {
                    Ok(c.clone())
                } else {
                    cast(c, k.data_type()).map_err(|e| column_err(e.to_string()))
                }
            })
            .collect()
    }
}
