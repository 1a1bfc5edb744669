//! The commit engine on local `file://` tables (delta-rs' own log store over
//! a temporary directory): both bodies, the compare-and-swap, and the MERGE's
//! rules, without a server.

use std::sync::Arc;

use deltalake::arrow::array::{BooleanArray, Int64Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType as ArrowType, Field, Schema};
use deltalake::kernel::{DataType, PrimitiveType, StructField};
use deltalake::writer::DeltaWriter;

use super::*;
use crate::decode::changes::Changes;
use crate::sink::table::{new_writer, query, stored_offsets};

const APP: &str = "app";

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_conflict_retries: 3,
        max_replans: 2,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    }
}

fn never() -> bool {
    false
}

/// A new table `(id bigint not null, v string, lsn bigint)` in `dir`.
async fn table(dir: &tempfile::TempDir) -> DeltaTable {
    let url = url::Url::from_directory_path(dir.path()).unwrap();
    let t = DeltaTable::try_from_url(url).await.unwrap();
    t.create()
        .with_columns([
            StructField::new("id", DataType::Primitive(PrimitiveType::Long), false),
            StructField::new("v", DataType::Primitive(PrimitiveType::String), true),
            StructField::new("lsn", DataType::Primitive(PrimitiveType::Long), true),
        ])
        .await
        .unwrap()
}

fn rows(ids: &[i64], vs: &[&str], lsns: &[Option<i64>]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", ArrowType::Int64, false),
        Field::new("v", ArrowType::Utf8, true),
        Field::new("lsn", ArrowType::Int64, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(vs.to_vec())),
            Arc::new(Int64Array::from(lsns.to_vec())),
        ],
    )
    .unwrap()
}

async fn files(t: &DeltaTable, batch: RecordBatch) -> Vec<Add> {
    let props = crate::sink::table::writer_properties(crate::sink::Compression::Snappy, 1000);
    let mut w = new_writer(t, props, 1 << 20).unwrap();
    w.write(batch).await.unwrap();
    w.flush().await.unwrap()
}

fn p0(expected: Option<i64>, last: i64) -> Vec<PartitionCommit> {
    vec![PartitionCommit {
        tp: TopicPartition::new("t", 0),
        expected,
        last,
    }]
}

/// (id, v) of every row, by id.
async fn table_rows(t: &DeltaTable) -> Vec<(i64, String)> {
    let out = query(t, "SELECT id, v FROM t ORDER BY id").await.unwrap();
    let mut all = Vec::new();
    for b in out {
        let vs = deltalake::arrow::compute::cast(b.column(1), &ArrowType::Utf8).unwrap();
        let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        let vs = vs.as_any().downcast_ref::<StringArray>().unwrap();
        all.extend((0..b.num_rows()).map(|i| (ids.value(i), vs.value(i).to_owned())));
    }
    all
}

async fn stored(t: &DeltaTable) -> Option<i64> {
    let tp = TopicPartition::new("t", 0);
    stored_offsets(t, APP, std::slice::from_ref(&tp))
        .await
        .unwrap()
        .remove(&tp)
        .flatten()
}

#[tokio::test]
async fn an_append_lands_once_with_its_offsets_and_a_replay_is_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = table(&dir).await;
    let log = TableLog::default();
    let adds = files(&t, rows(&[1, 2], &["a", "b"], &[None, None])).await;
    fn commit<'a>(
        t: &'a mut DeltaTable,
        log: &'a TableLog,
        adds: Vec<Add>,
        expected: Option<i64>,
        last: i64,
    ) -> Commit<'a> {
        Commit::new(t, log, APP, policy())
            .with_partitions(p0(expected, last))
            .with_files(adds)
    }
    let r = commit(&mut t, &log, adds.clone(), None, 1)
        .execute(&never)
        .await
        .unwrap();
    assert_eq!(r.outcome, CommitOutcome::Committed { version: 1 });
    assert_eq!((r.files, r.attempts, r.replans), (1, 1, 0));
    assert!(r.bytes > 0);
    assert_eq!(stored(&t).await, Some(1));
    // The same commit again (its response lost): found landed, nothing written.
    let r = commit(&mut t, &log, adds, None, 1)
        .execute(&never)
        .await
        .unwrap();
    assert_eq!(r.outcome, CommitOutcome::AlreadyCommitted);
    assert_eq!(t.version(), Some(1));
    // A commit from an offset the table no longer holds: stale, naming it.
    let more = files(&t, rows(&[3], &["c"], &[None])).await;
    let r = commit(&mut t, &log, more, Some(0), 2)
        .execute(&never)
        .await
        .unwrap();
    assert_eq!(
        r.outcome,
        CommitOutcome::Stale {
            partitions: vec![(TopicPartition::new("t", 0), Some(1))]
        }
    );
    assert_eq!(table_rows(&t).await, [(1, "a".into()), (2, "b".into())]);
}

/// Changes `(id, v, lsn)`; `v = None` deletes.
fn changes(c: &[(i64, Option<&str>, Option<i64>)]) -> Changes {
    let vs: Vec<&str> = c.iter().map(|c| c.1.unwrap_or("")).collect();
    let ids: Vec<i64> = c.iter().map(|c| c.0).collect();
    let lsns: Vec<Option<i64>> = c.iter().map(|c| c.2).collect();
    let deleted: BooleanArray = c.iter().map(|c| Some(c.1.is_none())).collect();
    Changes::new(rows(&ids, &vs, &lsns), deleted)
}

fn window(
    order_by: Option<&str>,
    c: &[(i64, Option<&str>, Option<i64>)],
    expected: Option<i64>,
    last: i64,
) -> UpsertWindow {
    UpsertWindow {
        strategy: Default::default(),
        key: vec!["id".into()],
        order_by: order_by.map(str::to_owned),
        changes: changes(c),
        partitions: p0(expected, last),
        parquet: None,
    }
}

async fn upsert(t: &mut DeltaTable, log: &TableLog, w: UpsertWindow) -> CommitReport {
    Commit::new(t, log, APP, policy())
        .with_upsert(w)
        .execute(&never)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_merge_inserts_updates_and_deletes_with_its_offsets_in_the_same_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = table(&dir).await;
    let log = TableLog::default();
    let w = window(
        None,
        &[
            (1, Some("a"), None),
            (2, Some("b"), None),
            (1, Some("a2"), None),
        ],
        None,
        2,
    );
    let r = upsert(&mut t, &log, w).await;
    assert_eq!(r.outcome, CommitOutcome::Committed { version: 1 });
    assert!(r.files >= 1 && r.bytes > 0, "{r:?}");
    assert_eq!(table_rows(&t).await, [(1, "a2".into()), (2, "b".into())]);
    assert_eq!(stored(&t).await, Some(2));
    // Update 2, delete 1, insert 3; a delete of an absent key does nothing.
    let w = window(
        None,
        &[
            (2, Some("b2"), None),
            (1, None, None),
            (3, Some("c"), None),
            (9, None, None),
        ],
        Some(2),
        6,
    );
    let r = upsert(&mut t, &log, w).await;
    assert_eq!(r.outcome, CommitOutcome::Committed { version: 2 });
    assert_eq!(table_rows(&t).await, [(2, "b2".into()), (3, "c".into())]);
    assert_eq!(stored(&t).await, Some(6));
    // Replayed after a lost response: found landed, not merged twice.
    let again = window(None, &[(2, Some("b2"), None)], Some(2), 6);
    assert_eq!(
        upsert(&mut t, &log, again).await.outcome,
        CommitOutcome::AlreadyCommitted
    );
    assert_eq!(t.version(), Some(2));
}

#[tokio::test]
async fn a_merge_that_changes_nothing_commits_its_offsets_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = table(&dir).await;
    let log = TableLog::default();
    // Deletes of keys the table never held: no row changes, no MERGE commit.
    let r = upsert(&mut t, &log, window(None, &[(7, None, None)], None, 0)).await;
    assert_eq!(r.outcome, CommitOutcome::Committed { version: 1 });
    assert_eq!((r.files, r.bytes), (0, 0));
    assert_eq!(stored(&t).await, Some(0));
    assert!(table_rows(&t).await.is_empty());
}

#[tokio::test]
async fn with_an_order_an_older_change_never_replaces_a_newer_row() {
    order_rules(UpsertStrategy::CopyOnWrite).await;
}

/// The ordering rules under `strategy`: an older change never replaces a
/// newer row, a newer delete wins, a change without an order value always
/// replaces.
async fn order_rules(strategy: UpsertStrategy) {
    let dir = tempfile::tempdir().unwrap();
    let mut t = table(&dir).await;
    if strategy == UpsertStrategy::MergeOnRead {
        t = crate::sink::dv::ensure_enabled(t).await.unwrap();
    }
    let log = TableLog::default();
    let upsert = async |t: &mut DeltaTable, log: &TableLog, mut w: UpsertWindow| {
        w.strategy = strategy;
        upsert(t, log, w).await
    };
    let lsn = Some("lsn");
    upsert(
        &mut t,
        &log,
        window(lsn, &[(1, Some("new"), Some(10))], None, 0),
    )
    .await;
    // A late change (lsn 5) and a late delete (lsn 7) of key 1, a change of 2.
    let late = window(
        lsn,
        &[(1, Some("old"), Some(5)), (2, Some("b"), Some(1))],
        Some(0),
        1,
    );
    upsert(&mut t, &log, late).await;
    upsert(&mut t, &log, window(lsn, &[(1, None, Some(7))], Some(1), 2)).await;
    assert_eq!(table_rows(&t).await, [(1, "new".into()), (2, "b".into())]);
    // A newer delete wins; a change without an order value always replaces.
    upsert(
        &mut t,
        &log,
        window(lsn, &[(1, None, Some(11))], Some(2), 3),
    )
    .await;
    upsert(
        &mut t,
        &log,
        window(lsn, &[(2, Some("forced"), None)], Some(3), 4),
    )
    .await;
    assert_eq!(table_rows(&t).await, [(2, "forced".into())]);
    assert_eq!(stored(&t).await, Some(4));
}

#[tokio::test]
async fn changes_that_name_no_key_are_refused_for_good_and_nothing_lands() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = table(&dir).await;
    let log = TableLog::default();
    let mut w = window(None, &[(1, Some("a"), None)], None, 0);
    w.key = vec!["nope".into()];
    let err = Commit::new(&mut t, &log, APP, policy())
        .with_upsert(w)
        .execute(&never)
        .await
        .unwrap_err();
    assert!(matches!(err, CommitError::Changes { .. }), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("`nope`"), "{err}");
    assert_eq!(t.version(), Some(0));
}

/// Issue 22, case 10: a commit that kept losing to conflicting commits is a
/// window to rewind and retry later, not a reason to stop.
#[test]
fn a_contended_commit_is_retried_later_not_fatal() {
    let e = CommitError::Contended {
        uri: "s3://b/t".into(),
        replans: 10,
        last_error: "concurrent append".into(),
    };
    assert!(e.is_retryable());
    assert!(e.to_string().contains("10 times"), "{e}");
}

/// A new table with deletion vectors enabled, for merge-on-read.
async fn dv_table(dir: &tempfile::TempDir) -> DeltaTable {
    crate::sink::dv::ensure_enabled(table(dir).await)
        .await
        .unwrap()
}

async fn upsert_on_read(t: &mut DeltaTable, log: &TableLog, mut w: UpsertWindow) -> CommitReport {
    w.strategy = UpsertStrategy::MergeOnRead;
    upsert(t, log, w).await
}

/// Per live file: (rows its vector deletes, or 0).
fn vectors(t: &DeltaTable) -> Vec<i64> {
    let mut v: Vec<i64> = t
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| f.deletion_vector_descriptor().map_or(0, |d| d.cardinality))
        .collect();
    v.sort();
    v
}

/// Merge-on-read through the engine: one key updated in every window ends as
/// one live row; a delete, a re-insert and a delete of an absent key; no file
/// is ever rewritten (the first window's file stays, its vector growing), and
/// each window's offsets land in its commit.
#[tokio::test]
async fn merge_on_read_keeps_one_live_row_per_key_and_rewrites_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = dv_table(&dir).await;
    let log = TableLog::default();
    let first: Vec<(i64, Option<&str>, Option<i64>)> =
        (0..10).map(|i| (i, Some("v0"), None)).collect();
    upsert_on_read(&mut t, &log, window(None, &first, None, 0)).await;
    let original = t
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .next()
        .unwrap()
        .path()
        .into_owned();
    let values: Vec<String> = (1..=5).map(|w| format!("v{w}")).collect();
    for (w, v) in values.iter().enumerate() {
        let w = w as i64 + 1;
        let r = upsert_on_read(
            &mut t,
            &log,
            window(
                None,
                &[(3, Some(v), None), (3, Some(v), None)],
                Some(w - 1),
                w,
            ),
        )
        .await;
        assert!(
            matches!(r.outcome, CommitOutcome::Committed { .. }),
            "{r:?}"
        );
        assert_eq!(r.files, 1, "one new file, nothing rewritten: {r:?}");
    }
    let want = |t: &[(i64, &str)]| -> Vec<(i64, String)> {
        t.iter().map(|(i, v)| (*i, v.to_string())).collect()
    };
    let mut expect: Vec<(i64, &str)> = (0..10).map(|i| (i, "v0")).collect();
    expect[3].1 = "v5";
    assert_eq!(table_rows(&t).await, want(&expect));
    assert_eq!(stored(&t).await, Some(5));
    // Delete 4, delete 99 (absent), then re-insert 4.
    upsert_on_read(
        &mut t,
        &log,
        window(None, &[(4, None, None), (99, None, None)], Some(5), 6),
    )
    .await;
    expect.remove(4);
    assert_eq!(table_rows(&t).await, want(&expect));
    upsert_on_read(
        &mut t,
        &log,
        window(None, &[(4, Some("back"), None)], Some(6), 7),
    )
    .await;
    expect.insert(4, (4, "back"));
    assert_eq!(table_rows(&t).await, want(&expect));
    // The first file is still there, its vector deleting keys 3 and 4.
    let snapshot = t.snapshot().unwrap();
    let first_file = snapshot
        .log_data()
        .iter()
        .find(|f| f.path() == original.as_str())
        .and_then(|f| f.deletion_vector_descriptor())
        .map(|d| d.cardinality);
    assert_eq!(first_file, Some(2));
    // Every file but the live ones of key 3 and 4 has its row deleted.
    assert_eq!(
        vectors(&t).iter().filter(|c| **c == 0).count(),
        2,
        "{:?}",
        vectors(&t)
    );
    assert_eq!(stored(&t).await, Some(7));
}

/// With `order_by`, merge-on-read keeps the MERGE's rule.
#[tokio::test]
async fn merge_on_read_with_an_order_never_lets_an_older_change_win() {
    order_rules(UpsertStrategy::MergeOnRead).await;
}
