//! Where a window's keys live: the data file and physical row index of each
//! live row whose key the window changes, the positions its deletion vectors
//! delete. The table's key index ([`super::index`]) is probed with the
//! window's keys, file by file, honouring each file's deletion vector; only
//! files the index does not hold yet are read (their key columns alone). The
//! row index is the row's place in its file from 0, as the protocol defines it.

use std::sync::Arc;

use buoyant_kernel::actions::deletion_vector as kernel_dv;
use buoyant_kernel_engine::executor::tokio::TokioBackgroundExecutor;
use buoyant_kernel_engine::filesystem::ObjectStoreStorageHandler;
use deltalake::DeltaTable;
use deltalake::arrow::array::RecordBatch;
use deltalake::arrow::datatypes::DataType;
use deltalake::kernel::DeletionVectorDescriptor;
use futures::StreamExt as _;
use roaring::RoaringTreemap;
use rustc_hash::FxHashMap;
use url::Url;

use super::error::LocateError;
use super::index::{FileKeys, Fingerprints, KeyIndex, Partition, Source, fingerprint, read_file};

/// A data file holding live rows of keys a window changes.
#[derive(Debug, Clone)]
pub struct FileAt {
    /// Its path.
    pub path: String,
    /// Its keys (and order values) as the index holds them.
    pub keys: Arc<FileKeys>,
    /// The rows its current deletion vector deletes.
    pub deleted: Arc<RoaringTreemap>,
}

/// A live row whose key a change of the window has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// The change (its row in the window's keys).
    pub change: usize,
    /// The file ([`Located::files`]).
    pub file: usize,
    /// The row's index in the file.
    pub row: u64,
}

/// Where a window's keys live.
#[derive(Debug, Default)]
pub struct Located {
    /// The files with hits.
    pub files: Vec<FileAt>,
    /// The hits, file by file.
    pub hits: Vec<Hit>,
}

/// How many data files are read at once to fill the index.
const READ_AHEAD: usize = 8;

/// The live rows of `table` whose key is one of `keys` (a batch of the key
/// columns, one row per key), through `index` (files it does not hold yet
/// are read and added; with `order_by`, their order values too).
pub async fn locate(
    table: &DeltaTable,
    index: &KeyIndex,
    keys: &RecordBatch,
    order_by: Option<&str>,
) -> Result<Located, LocateError> {
    let names: Vec<String> = keys
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let types: Vec<DataType> = keys
        .columns()
        .iter()
        .map(|c| c.data_type().clone())
        .collect();
    let wanted = Wanted::of(&fingerprint(keys.columns())?);
    let snapshot = table.snapshot()?;
    let files: Vec<(String, Option<DeletionVectorDescriptor>, Partition)> = snapshot
        .log_data()
        .iter()
        .map(|f| {
            (
                f.path().into_owned(),
                f.deletion_vector_descriptor(),
                f.partition_values_map(),
            )
        })
        .collect();
    index.retain(&files.iter().map(|(p, _, _)| p.as_str()).collect());
    let held = fill(table, index, &files, &names, &types, order_by).await?;
    let mut located = Located::default();
    for ((path, dv, _), file_keys) in files.into_iter().zip(held) {
        let rows = wanted.probe(&file_keys.keys);
        if rows.is_empty() {
            continue;
        }
        let deleted = match dv {
            Some(d) => vector(table, index, &path, d).await?,
            None => Arc::default(),
        };
        let file = located.files.len();
        let before = located.hits.len();
        located.hits.extend(
            rows.into_iter()
                .filter(|(row, _)| !deleted.contains(*row))
                .map(|(row, change)| Hit { change, file, row }),
        );
        if located.hits.len() > before {
            located.files.push(FileAt {
                path,
                keys: file_keys,
                deleted,
            });
        }
    }
    Ok(located)
}

/// Every file's entry, the missing ones read (several at a time) and added.
async fn fill(
    table: &DeltaTable,
    index: &KeyIndex,
    files: &[(String, Option<DeletionVectorDescriptor>, Partition)],
    names: &[String],
    types: &[DataType],
    order_by: Option<&str>,
) -> Result<Vec<Arc<FileKeys>>, LocateError> {
    let ordered = order_by.is_some();
    let missing: Vec<(&str, &Partition)> = files
        .iter()
        .map(|(p, _, partition)| (p.as_str(), partition))
        .filter(|(p, _)| index.get(p, types, ordered).is_none())
        .collect();
    for chunk in missing.chunks(READ_AHEAD) {
        let mut reads = futures::stream::FuturesOrdered::new();
        for (path, partition) in chunk {
            let source = Source { path, partition };
            reads.push_back(read_file(table, source, names, types, order_by));
        }
        for (path, _) in chunk {
            let keys = reads.next().await.ok_or_else(|| LocateError::Column {
                path: (*path).to_owned(),
                column: names.join(", "),
                problem: "not read".into(),
            })??;
            index.put(path, Arc::new(keys));
        }
    }
    files
        .iter()
        .map(|(p, _, _)| {
            index
                .get(p, types, ordered)
                .ok_or_else(|| LocateError::Column {
                    path: p.clone(),
                    column: names.join(", "),
                    problem: "not indexed".into(),
                })
        })
        .collect()
}

/// A file's vector, from the index when its descriptor is unchanged.
async fn vector(
    table: &DeltaTable,
    index: &KeyIndex,
    path: &str,
    d: DeletionVectorDescriptor,
) -> Result<Arc<RoaringTreemap>, LocateError> {
    let id = format!("{:?}{}@{:?}", d.storage_type, d.path_or_inline_dv, d.offset);
    if let Some(v) = index.vector(path, &id) {
        return Ok(v);
    }
    let v = Arc::new(read_vector(table, path, d).await?);
    index.put_vector(path, id, v.clone());
    Ok(v)
}

/// The window's keys by fingerprint.
enum Wanted {
    Int(FxHashMap<i64, usize>, i64, i64),
    Hash(FxHashMap<u128, usize>),
}

impl Wanted {
    fn of(keys: &Fingerprints) -> Self {
        match keys {
            Fingerprints::Int(v) => Wanted::Int(
                v.iter().enumerate().map(|(i, k)| (*k, i)).collect(),
                v.iter().copied().min().unwrap_or(i64::MAX),
                v.iter().copied().max().unwrap_or(i64::MIN),
            ),
            Fingerprints::Hash(v) => {
                Wanted::Hash(v.iter().enumerate().map(|(i, k)| (*k, i)).collect())
            }
        }
    }

    /// The rows of a file whose key is wanted, with the change that wants it.
    fn probe(&self, file: &Fingerprints) -> Vec<(u64, usize)> {
        let hits = |m: &dyn Fn(usize) -> Option<usize>, n: usize| {
            (0..n)
                .filter_map(|i| m(i).map(|c| (i as u64, c)))
                .collect::<Vec<_>>()
        };
        match (self, file) {
            (Wanted::Int(m, lo, hi), Fingerprints::Int(v)) => hits(
                &|i| {
                    let k = v[i];
                    if k < *lo || k > *hi {
                        None
                    } else {
                        m.get(&k).copied()
                    }
                },
                v.len(),
            ),
            (Wanted::Hash(m), Fingerprints::Hash(v)) => hits(&|i| m.get(&v[i]).copied(), v.len()),
            // Fingerprinted in other types: the index re-reads such a file.
            _ => Vec::new(),
        }
    }
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
