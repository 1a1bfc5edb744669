//! [`crate::sink::dv::apply`]: a window written by deletion vectors.

use super::*;

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
        let m = crate::sink::dv::apply::apply(t, &index, &plan, 5)
            .await
            .unwrap();
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
