//! Tables with deletion vectors written by `tributary::sink::dv` (issue 25's
//! first part), read back by readers we did not write: DuckDB's delta extension
//! (delta-kernel-rs underneath), the Python deltalake package's DataFusion
//! reader, and Spark with Delta Lake's jars. The table is local; no server is
//! needed but the readers' interpreters.

use std::process::Command;
use std::sync::Arc;

use deltalake::arrow::array::{BooleanArray, Int64Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{DataType as DeltaType, PrimitiveType, StructField};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use tributary::decode::changes::Changes;
use tributary::sink::dv;

fn id_v(rows: &[(i64, &str)]) -> RecordBatch {
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

/// Apply one window by merge-on-read and commit it.
async fn window(t: &mut deltalake::DeltaTable, rows: &[(i64, &str)], deleted: &[bool]) {
    let changes = Changes::new(id_v(rows), BooleanArray::from(deleted.to_vec()));
    let plan = tributary::sink::upsert::MergePlan {
        key: vec!["id".into()],
        order_by: None,
        changes,
        deleted_order: None,
        parquet: None,
    };
    let index = dv::index::KeyIndex::default();
    let m = dv::apply::apply(t, &index, &plan, 1).await.unwrap();
    let done = CommitBuilder::default()
        .with_actions(m.actions)
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
}

/// A local table `(id, v)` of ids 0..100 with deletion vectors enabled.
async fn dv_table(dir: &tempfile::TempDir) -> (url::Url, deltalake::DeltaTable) {
    let url = url::Url::from_directory_path(dir.path()).unwrap();
    let mut t = deltalake::DeltaTable::try_from_url(url.clone())
        .await
        .unwrap()
        .create()
        .with_columns([
            StructField::new("id", DeltaType::Primitive(PrimitiveType::Long), false),
            StructField::new("v", DeltaType::Primitive(PrimitiveType::String), true),
        ])
        .await
        .unwrap();
    let initial: Vec<(i64, String)> = (0..100).map(|i| (i, format!("v{i}"))).collect();
    let pairs: Vec<(i64, &str)> = initial.iter().map(|(i, v)| (*i, v.as_str())).collect();
    let mut w = RecordBatchWriter::for_table(&t).unwrap();
    w.write(id_v(&pairs)).await.unwrap();
    w.flush_and_commit(&mut t).await.unwrap();
    (url, dv::enable(t).await.unwrap())
}

async fn count(t: &deltalake::DeltaTable) -> i64 {
    let live = tributary::sink::table::query(t, "SELECT count(*) FROM t")
        .await
        .unwrap();
    live[0]
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0)
}

/// Issue 25's maintenance needs vacuum to keep every DV file a live file
/// references: delta-rs' vacuum, lite and full, at zero retention, leaves the
/// table reading the same rows, and removes a vector no file references any
/// more (replaced by a later window's union).
#[tokio::test]
async fn vacuum_keeps_the_vectors_live_files_reference() {
    use tributary::ops::maintenance::{VacuumOptions, vacuum};
    let dir = tempfile::tempdir().unwrap();
    let (url, mut t) = dv_table(&dir).await;
    window(&mut t, &[(1, ""), (2, "")], &[true, true]).await;
    window(&mut t, &[(3, "")], &[true]).await;
    assert_eq!(count(&t).await, 97);
    let dv_files = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("deletion_vector_"))
            .count()
    };
    assert_eq!(dv_files(dir.path()), 2, "one DV file per window");
    for full in [false, true] {
        let opts = VacuumOptions {
            retention: Some(std::time::Duration::ZERO),
            force_retention: true,
            full,
            ..Default::default()
        };
        let t0 = deltalake::DeltaTable::try_from_url(url.clone())
            .await
            .unwrap();
        vacuum(t0, opts).await.unwrap();
        let fresh = deltalake::DeltaTable::try_from_url(url.clone())
            .await
            .unwrap();
        assert_eq!(count(&fresh).await, 97, "full = {full}");
    }
    // The first window's vector was replaced by the second's union: only the
    // latter is referenced, and only it is left.
    assert_eq!(dv_files(dir.path()), 1);
}

#[tokio::test]
async fn a_table_upserted_by_merge_on_read_is_read_exactly_by_duckdb_deltalake_and_spark() {
    let python = std::env::var("TRIBUTARY_TEST_PYTHON")
        .expect("TRIBUTARY_TEST_PYTHON is set by tests/run.sh (the readers' interpreter)");
    let dir = tempfile::tempdir().unwrap();
    let (url, mut t) = dv_table(&dir).await;
    let initial: Vec<(i64, String)> = (0..100).map(|i| (i, format!("v{i}"))).collect();
    // Updates, deletes, a re-insert of a deleted key, a delete of an absent one,
    // and one key updated in every window.
    window(
        &mut t,
        &[
            (2, "a"),
            (5, ""),
            (7, ""),
            (150, "new"),
            (999, ""),
            (50, "w1"),
        ],
        &[false, true, true, false, true, false],
    )
    .await;
    window(
        &mut t,
        &[(7, "back"), (3, ""), (50, "w2")],
        &[false, true, false],
    )
    .await;
    window(
        &mut t,
        &[(150, ""), (50, "w3"), (2, "b")],
        &[true, false, false],
    )
    .await;
    let mut want: std::collections::BTreeMap<i64, String> = initial.into_iter().collect();
    for k in [3, 5] {
        want.remove(&k);
    }
    want.insert(2, "b".into());
    want.insert(7, "back".into());
    want.insert(50, "w3".into());
    let want: Vec<serde_json::Value> = want
        .into_iter()
        .map(|(i, v)| serde_json::json!([i, v]))
        .collect();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/readers/dv_rows.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(url.as_str())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for reader in ["duckdb", "deltalake_datafusion", "spark_delta"] {
        let rows = got[reader]
            .as_array()
            .unwrap_or_else(|| panic!("{reader}: {}", got[reader]));
        assert_eq!(rows, &want, "{reader}");
    }
    // delta-rs' own reader agrees.
    assert_eq!(count(&t).await as usize, want.len());
}

/// Compaction beside merge-on-read: delta-rs' optimize reads the files through
/// their vectors, so the files it writes hold only live rows and carry none.
#[tokio::test]
async fn compaction_rewrites_files_without_their_deleted_rows() {
    use tributary::ops::maintenance::Compact;
    let dir = tempfile::tempdir().unwrap();
    let (url, mut t) = dv_table(&dir).await;
    window(
        &mut t,
        &[(1, ""), (2, "x"), (200, "y")],
        &[true, false, false],
    )
    .await;
    window(&mut t, &[(3, ""), (200, "z")], &[true, false]).await;
    let with_vectors = |t: &deltalake::DeltaTable| {
        t.snapshot()
            .unwrap()
            .log_data()
            .iter()
            .filter(|f| f.deletion_vector_descriptor().is_some())
            .count()
    };
    assert!(with_vectors(&t) >= 1);
    let before = count(&t).await;
    assert_eq!(before, 99, "100 rows, 1 and 3 deleted, 200 inserted");
    let compact = Compact::new(t, None);
    let plan = compact.plan().await.unwrap();
    let report = compact.execute(plan).await.unwrap();
    assert!(report.files_removed > 0, "{report:?}");
    let fresh = deltalake::DeltaTable::try_from_url(url).await.unwrap();
    assert_eq!(count(&fresh).await, before);
    assert_eq!(
        with_vectors(&fresh),
        0,
        "the rewritten files carry no vector"
    );
    let v = tributary::sink::table::query(&fresh, "SELECT v FROM t WHERE id = 200")
        .await
        .unwrap();
    let v = deltalake::arrow::compute::cast(v[0].column(0), &DataType::Utf8).unwrap();
    assert_eq!(
        v.as_any().downcast_ref::<StringArray>().unwrap().value(0),
        "z"
    );
}
