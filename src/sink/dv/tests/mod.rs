//! The protocol's rules for deletion vectors, checked against the kernel's own
//! reader of the bytes.

use std::sync::Arc;

use buoyant_kernel_engine::executor::tokio::TokioBackgroundExecutor;
use buoyant_kernel_engine::filesystem::ObjectStoreStorageHandler;
use deltalake::kernel::Add;

use crate::decode::changes::Changes;
use deltalake::logstore::object_store;

use super::*;
use fixtures::*;

mod apply;
mod fixtures;
mod positions;

/// The row count of each data file whose statistics state it, by path.
pub(super) fn rows_by_path<'a>(adds: impl IntoIterator<Item = &'a Add>) -> HashMap<String, u64> {
    adds.into_iter()
        .filter_map(|a| {
            let stats: serde_json::Value = serde_json::from_str(a.stats.as_deref()?).ok()?;
            Some((a.path.clone(), stats.get("numRecords")?.as_u64()?))
        })
        .collect()
}

pub(super) fn vector(rows: &[u64]) -> RoaringTreemap {
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
