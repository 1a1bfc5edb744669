//! [`crate::sink::dv::positions`]: where a window's keys live.

use super::*;

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
    let found = crate::sink::dv::positions::locate(&t, &index, &keys, None)
        .await
        .unwrap();
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
        crate::sink::dv::positions::read_vector(&t, &low, dv)
            .await
            .unwrap(),
        vector(&[3])
    );
}
