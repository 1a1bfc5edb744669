//! The protocol's rules for deletion vectors, checked against the kernel's own
//! reader of the bytes.

use std::sync::Arc;

use buoyant_kernel_engine::executor::tokio::TokioBackgroundExecutor;
use buoyant_kernel_engine::filesystem::ObjectStoreStorageHandler;
use deltalake::kernel::Add;

use crate::decode::changes::Changes;
use deltalake::logstore::object_store;

use super::*;

/// The row count of each data file whose statistics state it, by path.
fn rows_by_path<'a>(adds: impl IntoIterator<Item = &'a Add>) -> HashMap<String, u64> {
    adds.into_iter()
        .filter_map(|a| {
            let stats: serde_json::Value = serde_json::from_str(a.stats.as_deref()?).ok()?;
            Some((a.path.clone(), stats.get("numRecords")?.as_u64()?))
        })
        .collect()
}

fn vector(rows: &[u64]) -> RoaringTreemap {
    rows.iter().copied().collect()
}

/// `file` written under a table in `dir`, then each of its vectors read back
/// with the kernel's reader, through an object store as a reader would.
fn read_back(dir: &tempfile::TempDir, file: &DvFile) -> Vec<RoaringTreemap> {
    let table = Url::from_directory_path(dir.path()).unwrap();
    let at = dir.path().join(&file.path);
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::fs::write(&at, &file.bytes).unwrap();
    let store = Arc::new(object_store::local::LocalFileSystem::new());
    let storage = Arc::new(ObjectStoreStorageHandler::new(
        store,
        Arc::new(TokioBackgroundExecutor::new()),
    ));
    file.descriptors
        .iter()
        .map(|d| {
            let k = kernel_dv::DeletionVectorDescriptor::try_from(d.clone()).unwrap();
            assert_eq!(
                k.absolute_path(&table).unwrap().unwrap(),
                Url::from_file_path(&at).unwrap(),
                "the descriptor names the file written"
            );
            k.read(storage.clone(), &table).unwrap()
        })
        .collect()
}

#[test]
fn the_kernel_reads_back_every_vector_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let vectors = [
        vector(&[0, 5, 10]),
        vector(&[]),
        (0..100_000u64).step_by(3).chain([5_000_000_000]).collect(),
    ];
    let file = write_file("ab", uuid::Uuid::new_v4(), &vectors).unwrap();
    assert_eq!(read_back(&dir, &file), vectors);
}

#[test]
fn descriptors_name_the_file_and_the_place_of_each_vector_in_it() {
    let uuid = uuid::Uuid::new_v4();
    let file = write_file("xy", uuid, &[vector(&[1, 2, 3]), vector(&[7])]).unwrap();
    assert_eq!(file.path, format!("xy/deletion_vector_{uuid}.bin"));
    let (a, b) = (&file.descriptors[0], &file.descriptors[1]);
    for d in [a, b] {
        assert_eq!(d.storage_type, StorageType::UuidRelativePath);
        // A relative path: the prefix, then the UUID's 20 z85 characters.
        assert_eq!(d.path_or_inline_dv.len(), 2 + 20);
        assert!(d.path_or_inline_dv.starts_with("xy"));
    }
    assert_eq!((a.cardinality, b.cardinality), (3, 1));
    // After the version byte: a vector's size (4 bytes, big-endian), its bytes
    // (the magic and the bitmap), its CRC (4 bytes); the next one follows.
    assert_eq!(a.offset, Some(1));
    assert_eq!(b.offset, Some(1 + 4 + a.size_in_bytes + 4));
    assert_eq!(
        file.bytes.len() as i32,
        1 + 4 + a.size_in_bytes + 4 + 4 + b.size_in_bytes + 4
    );
    assert_eq!(file.bytes[0], 1, "format version");
    let size = i32::from_be_bytes(file.bytes[1..5].try_into().unwrap());
    assert_eq!(size, a.size_in_bytes);
    let magic = u32::from_le_bytes(file.bytes[5..9].try_into().unwrap());
    assert_eq!(magic, 1681511377, "portable RoaringTreemap magic");
}

#[test]
fn a_file_with_a_vector_gets_the_union_of_the_old_and_the_new() {
    let dir = tempfile::tempdir().unwrap();
    let old = vector(&[1, 5]);
    let both = union(Some(old), [5, 7]);
    assert_eq!(both, vector(&[1, 5, 7]));
    assert_eq!(union(None, [3]), vector(&[3]));
    let file = write_file("", uuid::Uuid::new_v4(), std::slice::from_ref(&both)).unwrap();
    assert_eq!(file.descriptors[0].cardinality, 3);
    assert_eq!(read_back(&dir, &file), [both]);
}

fn data_file(stats: Option<&str>, dv: Option<DeletionVectorDescriptor>) -> Add {
    Add {
        path: "part-0001.parquet".into(),
        size: 4096,
        partition_values: [("day".to_owned(), Some("2026-12-07".to_owned()))].into(),
        modification_time: 1,
        data_change: true,
        stats: stats.map(str::to_owned),
        deletion_vector: dv,
        ..Default::default()
    }
}

#[test]
fn a_new_vector_is_a_remove_of_the_logical_file_and_an_add_with_exact_rows_and_wide_bounds() {
    let first = write_file("", uuid::Uuid::new_v4(), &[vector(&[2])]).unwrap();
    let old_dv = first.descriptors[0].clone();
    let add = data_file(
        Some(
            r#"{"numRecords":10,"minValues":{"id":1},"maxValues":{"id":10},"nullCount":{"id":0}}"#,
        ),
        Some(old_dv.clone()),
    );
    let v = vector(&[2, 9]);
    let file = write_file("", uuid::Uuid::new_v4(), std::slice::from_ref(&v)).unwrap();
    let new_dv = file.descriptors[0].clone();
    let (remove, new) = replace(&add, new_dv.clone(), &v, 10, 99).unwrap();
    // The remove names the logical file the table holds: its path and old DV.
    assert_eq!(remove.path, add.path);
    assert_eq!(remove.deletion_vector, Some(old_dv));
    assert!(remove.data_change);
    assert_eq!(remove.deletion_timestamp, Some(99));
    assert_eq!(remove.partition_values, Some(add.partition_values.clone()));
    assert_eq!(remove.size, Some(4096));
    // The add is the same physical file with the new DV.
    assert_eq!((new.path.as_str(), new.size), (add.path.as_str(), 4096));
    assert_eq!(new.deletion_vector, Some(new_dv));
    assert_eq!(new.partition_values, add.partition_values);
    let stats: serde_json::Value = serde_json::from_str(new.stats.as_deref().unwrap()).unwrap();
    assert_eq!(stats["numRecords"], 10);
    assert_eq!(stats["tightBounds"], false);
    assert_eq!(stats["minValues"]["id"], 1, "the rest of the stats kept");
    assert_eq!(rows_by_path([&add]).get(&add.path), Some(&10));
}

#[test]
fn a_vector_past_the_files_rows_is_refused() {
    let add = data_file(None, None);
    let v = vector(&[3, 10]);
    let file = write_file("", uuid::Uuid::new_v4(), std::slice::from_ref(&v)).unwrap();
    let err = replace(&add, file.descriptors[0].clone(), &v, 10, 0).unwrap_err();
    assert!(
        matches!(
            err,
            DvError::PastTheFile {
                max: 10,
                rows: 10,
                ..
            }
        ),
        "{err}"
    );
    // Without stats, the add gets an exact count of its own.
    let ok = vector(&[3, 9]);
    let (_, new) = replace(&add, file.descriptors[0].clone(), &ok, 10, 0).unwrap();
    assert_eq!(rows_by_path([&new]).get(&add.path), Some(&10));
}

/// A local table `(id bigint not null)` holding one file of ids 0..10.
async fn one_file_table(dir: &tempfile::TempDir) -> deltalake::DeltaTable {
    use deltalake::arrow::array::{Int64Array, RecordBatch};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    use deltalake::kernel::{DataType as DeltaType, PrimitiveType, StructField};
    use deltalake::writer::{DeltaWriter, RecordBatchWriter};
    let url = Url::from_directory_path(dir.path()).unwrap();
    let mut t = deltalake::DeltaTable::try_from_url(url)
        .await
        .unwrap()
        .create()
        .with_columns([StructField::new(
            "id",
            DeltaType::Primitive(PrimitiveType::Long),
            false,
        )])
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..10))]).unwrap();
    let mut w = RecordBatchWriter::for_table(&t).unwrap();
    w.write(batch).await.unwrap();
    w.flush_and_commit(&mut t).await.unwrap();
    t
}

async fn ids(t: &deltalake::DeltaTable) -> Vec<i64> {
    use deltalake::arrow::array::Int64Array;
    crate::sink::table::query(t, "SELECT id FROM t ORDER BY id")
        .await
        .unwrap()
        .iter()
        .flat_map(|b| {
            let c = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            c.values().to_vec()
        })
        .collect()
}

/// Enabling deletion vectors upgrades the protocol; a vector committed as a
/// remove + add of its file hides exactly its rows from delta-rs' reader, and
/// a second vector for the same file is the union.
#[tokio::test]
async fn a_committed_vector_hides_its_rows_and_a_second_one_adds_to_it() {
    use deltalake::kernel::Action;
    use deltalake::kernel::transaction::CommitBuilder;
    use deltalake::protocol::DeltaOperation;
    use object_store::ObjectStoreExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mut t = one_file_table(&dir).await;
    assert!(!enabled(&t).unwrap());
    t = enable(t).await.unwrap();
    assert!(enabled(&t).unwrap());
    let protocol = t.snapshot().unwrap().protocol().clone();
    assert_eq!(
        (protocol.min_reader_version(), protocol.min_writer_version()),
        (3, 7)
    );
    let table_url = Url::from_directory_path(dir.path()).unwrap();
    let mut existing: Option<RoaringTreemap> = None;
    for (round, delete) in [[2u64, 9], [3, 9]].into_iter().enumerate() {
        // The file as an Add (delta-rs deprecates the conversion in favour of
        // its Arrow view; the commit needs the action).
        #[allow(deprecated)]
        let add = t
            .snapshot()
            .unwrap()
            .log_data()
            .into_iter()
            .map(|f| f.add_action())
            .next()
            .unwrap();
        let rows = rows_by_path([&add])[&add.path];
        let v = union(existing.take(), delete);
        let file = write_file("dv", uuid::Uuid::new_v4(), std::slice::from_ref(&v)).unwrap();
        let store = t.log_store().object_store(None);
        store
            .put(
                &deltalake::Path::from(file.path.as_str()),
                file.bytes.clone().into(),
            )
            .await
            .unwrap();
        let at = location(&table_url, &file.descriptors[0]).unwrap().unwrap();
        assert_eq!(at, table_url.join(&file.path).unwrap());
        let (remove, new) = replace(&add, file.descriptors[0].clone(), &v, rows, 1).unwrap();
        let done = CommitBuilder::default()
            .with_actions(vec![Action::Remove(remove), Action::Add(new)])
            .build(
                Some(t.snapshot().unwrap()),
                t.log_store(),
                DeltaOperation::Delete { predicate: None },
            )
            .await
            .unwrap();
        t.state = Some(done.snapshot());
        existing = Some(v);
        let live: Vec<i64> = match round {
            0 => vec![0, 1, 3, 4, 5, 6, 7, 8],
            _ => vec![0, 1, 4, 5, 6, 7, 8],
        };
        assert_eq!(ids(&t).await, live, "after vector {round}");
    }
    // A fresh reader of the log sees the same.
    let fresh = deltalake::DeltaTable::try_from_url(table_url)
        .await
        .unwrap();
    assert_eq!(ids(&fresh).await, [0, 1, 4, 5, 6, 7, 8]);
}

/// A vector committed for `path` of `t` (with `rows` physical rows).
async fn commit_vector(t: &mut deltalake::DeltaTable, path: &str, v: &RoaringTreemap) {
    use deltalake::kernel::Action;
    use deltalake::kernel::transaction::CommitBuilder;
    use deltalake::protocol::DeltaOperation;
    use object_store::ObjectStoreExt as _;
    #[allow(deprecated)]
    let add = t
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| f.add_action())
        .find(|a| a.path == path)
        .unwrap();
    let rows = rows_by_path([&add])[&add.path];
    let file = write_file("", uuid::Uuid::new_v4(), std::slice::from_ref(v)).unwrap();
    t.log_store()
        .object_store(None)
        .put(
            &deltalake::Path::from(file.path.as_str()),
            file.bytes.into(),
        )
        .await
        .unwrap();
    let (remove, new) = replace(&add, file.descriptors[0].clone(), v, rows, 1).unwrap();
    let done = CommitBuilder::default()
        .with_actions(vec![Action::Remove(remove), Action::Add(new)])
        .build(
            Some(t.snapshot().unwrap()),
            t.log_store(),
            DeltaOperation::Delete { predicate: None },
        )
        .await
        .unwrap();
    t.state = Some(done.snapshot());
}

/// The positions a window's deletion vectors delete: each live row of a
/// changed key, as (file, row index); rows a vector already deleted and keys
/// the table lacks are not found.
#[tokio::test]
async fn keys_are_found_at_their_file_and_row_and_deleted_rows_are_not() {
    use deltalake::arrow::array::{Int64Array, RecordBatch};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    use deltalake::writer::{DeltaWriter, RecordBatchWriter};
    let dir = tempfile::tempdir().unwrap();
    let mut t = one_file_table(&dir).await;
    // A second file: ids 10..20.
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from_iter_values(10..20))],
    )
    .unwrap();
    let mut w = RecordBatchWriter::for_table(&t).unwrap();
    w.write(batch).await.unwrap();
    w.flush_and_commit(&mut t).await.unwrap();
    t = enable(t).await.unwrap();
    let paths: Vec<String> = t
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| f.path().into_owned())
        .collect();
    let first = |t: &deltalake::DeltaTable| {
        // The file holding id 0..10: the one whose stats say min 0.
        #[allow(deprecated)]
        let adds: Vec<Add> = t
            .snapshot()
            .unwrap()
            .log_data()
            .iter()
            .map(|f| f.add_action())
            .collect();
        adds.into_iter()
            .find(|a| {
                a.stats
                    .as_deref()
                    .unwrap_or("")
                    .contains("\"minValues\":{\"id\":0}")
            })
            .unwrap()
            .path
    };
    let low = first(&t);
    let high = paths.iter().find(|p| **p != low).unwrap().clone();
    // Id 3 (row 3 of the first file) was deleted earlier.
    commit_vector(&mut t, &low, &vector(&[3])).await;
    let keys =
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![3, 5, 12, 99]))]).unwrap();
    let index = index::KeyIndex::default();
    let found = positions::locate(&t, &index, &keys, None).await.unwrap();
    let rows_of = |path: &str| -> Vec<(usize, u64)> {
        let f = found.files.iter().position(|f| f.path == path).unwrap();
        found
            .hits
            .iter()
            .filter(|h| h.file == f)
            .map(|h| (h.change, h.row))
            .collect()
    };
    assert_eq!(found.files.len(), 2, "{found:?}");
    // Key 5 (change 1) at row 5 of the first file, key 12 (change 2) at row 2
    // of the second; 3 is deleted and 99 absent.
    assert_eq!(rows_of(&low), [(1, 5)]);
    assert_eq!(rows_of(&high), [(2, 2)]);
    assert!(found.files.iter().all(|f| f.keys.rows() == 10));
    let low_at = found.files.iter().find(|f| f.path == low).unwrap();
    assert_eq!(*low_at.deleted, vector(&[3]));
    // Both files are held by the index now: 20 rows of 8-byte keys.
    let size = index.size();
    assert_eq!((size.files, size.rows, size.bytes), (2, 20, 160));
    // Its existing vector is read back through the table's own store.
    let dv = t
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .find(|f| f.path() == low.as_str())
        .and_then(|f| f.deletion_vector_descriptor())
        .unwrap();
    assert_eq!(
        positions::read_vector(&t, &low, dv).await.unwrap(),
        vector(&[3])
    );
}

/// `(id, v)` rows as a batch.
fn id_v(rows: &[(i64, &str)]) -> deltalake::arrow::array::RecordBatch {
    use deltalake::arrow::array::{Int64Array, RecordBatch, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
    .unwrap()
}

/// The table's `(id, v)` rows, by id.
async fn id_v_rows(t: &deltalake::DeltaTable) -> Vec<(i64, String)> {
    use deltalake::arrow::array::{Int64Array, StringArray};
    let out = crate::sink::table::query(t, "SELECT id, v FROM t ORDER BY id")
        .await
        .unwrap();
    out.iter()
        .flat_map(|b| {
            let vs = deltalake::arrow::compute::cast(
                b.column(1),
                &deltalake::arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let ids = b
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone();
            let vs = vs.as_any().downcast_ref::<StringArray>().unwrap().clone();
            (0..b.num_rows()).map(move |i| (ids.value(i), vs.value(i).to_owned()))
        })
        .collect()
}

/// A window applied by merge-on-read: updated and deleted keys' rows are
/// deleted by vectors, new rows are written, nothing is rewritten; delta-rs'
/// reader then sees exactly the upserted table, and a second window on the
/// same file unions its vector.
#[tokio::test]
async fn a_window_by_merge_on_read_updates_deletes_and_inserts_without_rewriting() {
    use deltalake::kernel::transaction::CommitBuilder;
    use deltalake::kernel::{DataType as DeltaType, PrimitiveType, StructField};
    use deltalake::protocol::{DeltaOperation, SaveMode};
    use deltalake::writer::{DeltaWriter, RecordBatchWriter};
    let dir = tempfile::tempdir().unwrap();
    let url = Url::from_directory_path(dir.path()).unwrap();
    let mut t = deltalake::DeltaTable::try_from_url(url)
        .await
        .unwrap()
        .create()
        .with_columns([
            StructField::new("id", DeltaType::Primitive(PrimitiveType::Long), false),
            StructField::new("v", DeltaType::Primitive(PrimitiveType::String), true),
        ])
        .await
        .unwrap();
    let initial: Vec<(i64, String)> = (0..10).map(|i| (i, format!("v{i}"))).collect();
    let pairs: Vec<(i64, &str)> = initial.iter().map(|(i, v)| (*i, v.as_str())).collect();
    let mut w = RecordBatchWriter::for_table(&t).unwrap();
    w.write(id_v(&pairs)).await.unwrap();
    w.flush_and_commit(&mut t).await.unwrap();
    t = enable(t).await.unwrap();
    let window = |rows: &[(i64, &str)], deleted: &[bool]| {
        Changes::new(
            id_v(rows),
            deltalake::arrow::array::BooleanArray::from(deleted.to_vec()),
        )
    };
    let index = index::KeyIndex::default();
    let commit = async |t: &mut deltalake::DeltaTable, c: &Changes| {
        let plan = crate::sink::upsert::MergePlan {
            key: vec!["id".into()],
            order_by: None,
            changes: c.clone(),
            deleted_order: None,
            parquet: None,
        };
        let m = apply::apply(t, &index, &plan, 5).await.unwrap();
        let done = CommitBuilder::default()
            .with_actions(m.actions.clone())
            .build(
                Some(t.snapshot().unwrap()),
                t.log_store(),
                DeltaOperation::Write {
                    mode: SaveMode::Append,
                    partition_by: None,
                    predicate: None,
                },
            )
            .await
            .unwrap();
        t.state = Some(done.snapshot());
        m
    };
    // Update 2, delete 5, insert 42, delete 99 (absent).
    let first = window(
        &[(2, "new"), (5, ""), (42, "x"), (99, "")],
        &[false, true, false, true],
    );
    let m = commit(&mut t, &first).await;
    assert_eq!(
        (m.rows_deleted, m.files_with_vectors, m.rows_written),
        (2, 1, 2)
    );
    let mut want: Vec<(i64, String)> = initial
        .iter()
        .filter(|(i, _)| *i != 5)
        .map(|(i, v)| (*i, if *i == 2 { "new".into() } else { v.clone() }))
        .collect();
    want.push((42, "x".into()));
    assert_eq!(id_v_rows(&t).await, want);
    // The second window deletes from the first file again (its vector is the
    // union) and from the file the first window wrote.
    let second = window(&[(3, ""), (42, "y")], &[true, false]);
    let m = commit(&mut t, &second).await;
    assert_eq!(
        (m.rows_deleted, m.files_with_vectors, m.rows_written),
        (2, 2, 1)
    );
    want.retain(|(i, _)| *i != 3);
    want.iter_mut().for_each(|r| {
        if r.0 == 42 {
            r.1 = "y".into()
        }
    });
    assert_eq!(id_v_rows(&t).await, want);
    // No file was rewritten: the original one is still in the table, with a
    // vector of its three deleted rows (2, 3, 5).
    let views: Vec<(String, Option<i64>)> = t
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| {
            let c = f.deletion_vector_descriptor().map(|d| d.cardinality);
            (f.path().into_owned(), c)
        })
        .collect();
    assert_eq!(views.len(), 3, "{views:?}");
    assert!(views.iter().any(|(_, c)| *c == Some(3)), "{views:?}");
}
