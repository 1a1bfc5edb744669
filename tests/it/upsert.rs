//! The upsert sink (`sink::upsert`) on a real S3 server: a window of keyed
//! changes lands as one MERGE carrying the window's offsets, under the same
//! compare-and-swap as an append.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use deltalake::arrow::array::{AsArray, BooleanArray, Int64Array, RecordBatch, StringArray};
use deltalake::arrow::datatypes::{DataType, Field, Int64Type, Schema};
use deltalake::kernel::{DataType as DeltaType, StructField};
use tributary::record::TopicPartition;
use tributary::sink::commit::{CommitOutcome, PartitionCommit, TableLog};
use tributary::sink::upsert::{Changes, UpsertWindow};

use crate::harness::*;

/// A table keyed on `id` with one value column `v`.
async fn keyed_table(s: &Scenario) -> deltalake::DeltaTable {
    let cfg = s.config("");
    deltalake::operations::create::CreateBuilder::new()
        .with_location(cfg.table.uri.as_str())
        .with_storage_options(cfg.storage.to_options())
        .with_columns([
            StructField::new("id", DeltaType::LONG, false),
            StructField::new("v", DeltaType::STRING, true),
        ])
        .await
        .unwrap();
    tributary::sink::table::load(&cfg.table.uri, &cfg.storage)
        .await
        .unwrap()
        .unwrap()
}

/// Changes: `Some(v)` upserts the id with value v, `None` deletes it.
fn window(
    s: &Scenario,
    changes: &[(i64, Option<&str>)],
    expected: Option<i64>,
    last: i64,
) -> UpsertWindow {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Utf8, true),
    ]));
    let rows = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(changes.iter().map(|c| c.0))),
            Arc::new(StringArray::from_iter(changes.iter().map(|c| c.1))),
        ],
    )
    .unwrap();
    UpsertWindow {
        strategy: Default::default(),
        key: vec!["id".into()],
        order_by: None,
        changes: Changes::new(
            rows,
            BooleanArray::from_iter(changes.iter().map(|c| Some(c.1.is_none()))),
        ),
        partitions: vec![PartitionCommit {
            tp: TopicPartition::new(s.topic.as_str(), 0),
            expected,
            last,
        }],
        parquet: Some(tributary::sink::table::writer_properties(
            tributary::sink::Compression::Zstd(1),
            1024,
        )),
    }
}

/// The compression codecs of the table's files' columns.
async fn codecs(s: &Scenario) -> std::collections::BTreeSet<String> {
    use deltalake::logstore::object_store::ObjectStoreExt as _;
    use deltalake::parquet::file::reader::{FileReader, SerializedFileReader};
    use futures::TryStreamExt as _;
    let t = s.table().await.unwrap();
    let paths: Vec<String> = t
        .get_active_add_actions_by_partitions(&[])
        .map_ok(|f| f.path().to_string())
        .try_collect()
        .await
        .unwrap();
    let store = t.object_store();
    let mut out = std::collections::BTreeSet::new();
    for p in paths {
        let bytes = store
            .get(&deltalake::Path::from(p.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let reader = SerializedFileReader::new(bytes).unwrap();
        for rg in reader.metadata().row_groups() {
            out.extend(
                rg.columns()
                    .iter()
                    .map(|c| format!("{:?}", c.compression())),
            );
        }
    }
    out
}

/// The table's rows as (id, v), by id.
async fn state(s: &Scenario) -> Vec<(i64, String)> {
    let t = s.table().await.unwrap();
    let mut out = Vec::new();
    for b in query(&t, "SELECT id, v FROM t ORDER BY id").await {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let vs = deltalake::arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
        let vs = vs.as_string::<i32>();
        out.extend((0..b.num_rows()).map(|i| (ids.value(i), vs.value(i).to_owned())));
    }
    out
}

fn rows(expected: &[(i64, &str)]) -> Vec<(i64, String)> {
    expected
        .iter()
        .map(|(i, v)| (*i, (*v).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_windows_insert_update_and_delete_by_key_with_their_offsets() {
    let s = Scenario::new("upsert", 1).await;
    let mut t = keyed_table(&s).await;
    let log = TableLog::default();
    let never = || false;
    let mut written = Vec::new();
    let mut apply = async |w: UpsertWindow| {
        let (o, _, w) = crate::harness::apply(&mut t, &log, &s.app_id, &w, policy(), &never)
            .await
            .unwrap();
        written.push(w);
        o
    };
    let committed = |o: &CommitOutcome| matches!(o, CommitOutcome::Committed { .. });

    let inserts: Vec<(i64, Option<&str>)> = vec![
        (1, Some("a1")),
        (2, Some("a2")),
        (3, Some("a3")),
        (4, Some("a4")),
        (5, Some("a5")),
    ];
    assert!(committed(&apply(window(&s, &inserts, None, 4)).await));
    assert_eq!(
        state(&s).await,
        rows(&[(1, "a1"), (2, "a2"), (3, "a3"), (4, "a4"), (5, "a5")])
    );

    // Updates, a delete, an insert, a key changed twice (the last wins), a key
    // deleted and re-inserted, and the delete of a key the table never had.
    let mixed = [
        (2, Some("b2")),
        (3, None),
        (6, Some("a6")),
        (1, Some("b1")),
        (1, Some("c1")),
        (4, None),
        (4, Some("d4")),
        (99, None),
    ];
    assert!(committed(&apply(window(&s, &mixed, Some(4), 12)).await));
    assert_eq!(
        state(&s).await,
        rows(&[(1, "c1"), (2, "b2"), (4, "d4"), (5, "a5"), (6, "a6")])
    );
    assert_eq!(s.stored_offsets(1).await[&0], Some(12));
    assert_eq!(s.operations().await[0], "MERGE");

    // A window that changes nothing (deletes of absent keys): delta-rs writes no
    // MERGE commit, the offsets still advance, in a commit of their own.
    let before = s.version().await.unwrap();
    let nothing = [(7, None), (8, None)];
    assert!(committed(&apply(window(&s, &nothing, Some(12), 14)).await));
    assert_eq!(s.version().await, Some(before + 1));
    assert_eq!(s.stored_offsets(1).await[&0], Some(14));
    assert_eq!(state(&s).await.len(), 5);

    // A replay of a window the table is past is stale, and writes nothing; a
    // retry of the last one is recognised as landed.
    let stale = apply(window(&s, &mixed, Some(4), 12)).await;
    assert!(matches!(stale, CommitOutcome::Stale { .. }), "{stale:?}");
    let again = apply(window(&s, &nothing, Some(12), 14)).await;
    assert_eq!(again, CommitOutcome::AlreadyCommitted);
    assert_eq!(s.version().await, Some(before + 1));

    // Deleted in one window, back in the next.
    assert!(committed(
        &apply(window(&s, &[(5, None)], Some(14), 15)).await
    ));
    assert!(committed(
        &apply(window(&s, &[(5, Some("e5"))], Some(15), 16)).await
    ));
    assert_eq!(
        state(&s).await,
        rows(&[(1, "c1"), (2, "b2"), (4, "d4"), (5, "e5"), (6, "a6")])
    );
    // What each MERGE wrote is counted (the daemon logs and exports it); the
    // offsets-only commit, the stale replay and the retry wrote nothing.
    assert!(written[0].files >= 1 && written[0].bytes > 0, "{written:?}");
    assert!(written[1].files >= 1 && written[1].bytes > 0, "{written:?}");
    assert!(
        written[2..5]
            .iter()
            .all(|w| *w == crate::harness::Written::default()),
        "{written:?}"
    );
    // The MERGEs write with the table's Parquet settings (here zstd), not
    // delta-rs' defaults.
    let codecs = codecs(&s).await;
    assert!(
        !codecs.is_empty() && codecs.iter().all(|c| c.starts_with("ZSTD")),
        "{codecs:?}"
    );
}

/// Two writers holding the same partition (a zombie after a rebalance): the
/// one whose expected offset still holds lands, the other is stale and changes
/// nothing, whichever order they reach the table in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_upsert_writer_is_stale_and_changes_nothing() {
    let s = Scenario::new("upsert-zombie", 1).await;
    let mut a = keyed_table(&s).await;
    let cfg = s.config("");
    let mut b = tributary::sink::table::load(&cfg.table.uri, &cfg.storage)
        .await
        .unwrap()
        .unwrap();
    let (la, lb) = (TableLog::default(), TableLog::default());
    let never = || false;
    let first = window(&s, &[(1, Some("a")), (2, Some("a"))], None, 1);
    let (o, _, _) = crate::harness::apply(&mut a, &la, &s.app_id, &first, policy(), &never)
        .await
        .unwrap();
    assert!(matches!(o, CommitOutcome::Committed { .. }));
    // Both read offset 1 and both try the next range with different changes.
    let new_owner = window(&s, &[(1, Some("new"))], Some(1), 3);
    let zombie = window(&s, &[(2, Some("zombie")), (3, Some("zombie"))], Some(1), 2);
    let (o, _, _) = crate::harness::apply(&mut a, &la, &s.app_id, &new_owner, policy(), &never)
        .await
        .unwrap();
    assert!(matches!(o, CommitOutcome::Committed { .. }));
    let (o, _, _) = crate::harness::apply(&mut b, &lb, &s.app_id, &zombie, policy(), &never)
        .await
        .unwrap();
    assert!(matches!(o, CommitOutcome::Stale { .. }), "{o:?}");
    assert_eq!(state(&s).await, rows(&[(1, "new"), (2, "a")]));
}

/// With `order_by`, an older change never replaces a newer one: not in the
/// window, and not in the table (a replay, or a source that sent it late).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_order_an_older_change_never_overwrites_a_newer_one() {
    let s = Scenario::new("upsert-order", 1).await;
    let cfg = s.config("");
    deltalake::operations::create::CreateBuilder::new()
        .with_location(cfg.table.uri.as_str())
        .with_storage_options(cfg.storage.to_options())
        .with_columns([
            StructField::new("id", DeltaType::LONG, false),
            StructField::new("v", DeltaType::STRING, true),
            StructField::new("lsn", DeltaType::LONG, false),
        ])
        .await
        .unwrap();
    let mut t = tributary::sink::table::load(&cfg.table.uri, &cfg.storage)
        .await
        .unwrap()
        .unwrap();
    let log = TableLog::default();
    let never = || false;
    let ordered =
        |changes: &[(i64, Option<&str>, Option<i64>)], expected: Option<i64>, last: i64| {
            let schema = Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, false),
                Field::new("v", DataType::Utf8, true),
                Field::new("lsn", DataType::Int64, true),
            ]));
            let rows = RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(Int64Array::from_iter_values(changes.iter().map(|c| c.0))),
                    Arc::new(StringArray::from_iter(changes.iter().map(|c| c.1))),
                    Arc::new(Int64Array::from_iter(changes.iter().map(|c| c.2))),
                ],
            )
            .unwrap();
            UpsertWindow {
                strategy: Default::default(),
                key: vec!["id".into()],
                order_by: Some("lsn".into()),
                changes: Changes::new(
                    rows,
                    BooleanArray::from_iter(changes.iter().map(|c| Some(c.1.is_none()))),
                ),
                partitions: vec![PartitionCommit {
                    tp: TopicPartition::new(s.topic.as_str(), 0),
                    expected,
                    last,
                }],
                parquet: None,
            }
        };
    let windows = [
        ordered(
            &[
                (1, Some("v10"), Some(10)),
                (2, Some("v20"), Some(20)),
                (3, Some("v30"), Some(30)),
            ],
            None,
            2,
        ),
        // Older changes of 1 (an update) and 2 (a delete) come late: ignored.
        // Newer ones of 3 win, whatever their order in the window.
        ordered(
            &[
                (1, Some("v5"), Some(5)),
                (2, None, Some(15)),
                (3, Some("v40"), Some(40)),
                (3, Some("v35"), Some(35)),
            ],
            Some(2),
            6,
        ),
        // A delete newer than the row deletes it.
        ordered(&[(1, None, Some(11))], Some(6), 7),
        // A change with no order value (a tombstone has none) is the newest.
        ordered(&[(3, None, None)], Some(7), 8),
    ];
    for w in &windows {
        let (o, _, _) = crate::harness::apply(&mut t, &log, &s.app_id, w, policy(), &never)
            .await
            .unwrap();
        assert!(matches!(o, CommitOutcome::Committed { .. }), "{o:?}");
    }
    assert_eq!(state(&s).await, rows(&[(2, "v20")]));
}

/// A table of (owner, id, v) keyed on owner and id, partitioned by owner or not.
async fn owned_table(s: &Scenario, partitioned: bool) {
    let cfg = s.config("");
    let mut create = deltalake::operations::create::CreateBuilder::new()
        .with_location(cfg.table.uri.as_str())
        .with_storage_options(cfg.storage.to_options())
        .with_columns([
            StructField::new("owner", DeltaType::INTEGER, false),
            StructField::new("id", DeltaType::LONG, false),
            StructField::new("v", DeltaType::STRING, true),
        ]);
    if partitioned {
        create = create.with_partition_columns(["owner"]);
    }
    create.await.unwrap();
}

/// A window upserting `ids` of `owners` with value `v`, accounted to the
/// Kafka partition numbered like the first owner.
fn owned(
    s: &Scenario,
    owners: &[i32],
    ids: &[i64],
    v: &str,
    expected: Option<i64>,
    last: i64,
) -> UpsertWindow {
    let schema = Arc::new(Schema::new(vec![
        Field::new("owner", DataType::Int32, false),
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Utf8, true),
    ]));
    let rows = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(deltalake::arrow::array::Int32Array::from(owners.to_vec())),
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(vec![v; ids.len()])),
        ],
    )
    .unwrap();
    UpsertWindow {
        strategy: Default::default(),
        key: vec!["owner".into(), "id".into()],
        order_by: None,
        changes: Changes::new(rows, BooleanArray::from(vec![false; ids.len()])),
        partitions: vec![PartitionCommit {
            tp: TopicPartition::new(s.topic.as_str(), owners[0]),
            expected,
            last,
        }],
        parquet: None,
    }
}

/// The table's (owner * 100 + id, v), ordered.
async fn owned_rows(s: &Scenario) -> Vec<(i64, String)> {
    let t = s.table().await.unwrap();
    let mut rows = Vec::new();
    for batch in query(&t, "SELECT owner, id, v FROM t ORDER BY owner, id").await {
        let owner = batch
            .column(0)
            .as_primitive::<deltalake::arrow::datatypes::Int32Type>();
        let id = batch.column(1).as_primitive::<Int64Type>();
        let v = deltalake::arrow::compute::cast(batch.column(2), &DataType::Utf8).unwrap();
        let v = v.as_string::<i32>();
        rows.extend((0..batch.num_rows()).map(|i| {
            (
                i64::from(owner.value(i)) * 100 + id.value(i),
                v.value(i).to_owned(),
            )
        }));
    }
    rows
}

/// Compaction beside upserts goes one partition (one commit) at a time, and a
/// partition whose files a MERGE rewrote after compaction planned is planned
/// again: nothing is lost or doubled, and the other partition never waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_beside_upserts_plans_a_partition_again_when_a_merge_wins() {
    let s = Scenario::new("upsert-compact", 2).await;
    owned_table(&s, true).await;
    let never = || false;
    let log = TableLog::default();
    let mut t = s.table().await.unwrap();
    // Three windows per owner, each inserting three ids: three small files in
    // each partition.
    let mut last = [None::<i64>; 2];
    for w in 0..3i64 {
        for owner in 0..2i32 {
            let ids: Vec<i64> = (w * 10..w * 10 + 3).collect();
            let win = owned(
                &s,
                &[owner; 3],
                &ids,
                &format!("w{w}"),
                last[owner as usize],
                w,
            );
            crate::harness::apply(&mut t, &log, &s.app_id, &win, policy(), &never)
                .await
                .unwrap();
            last[owner as usize] = Some(w);
        }
    }
    // Compaction opens the table, then a replica's MERGE rewrites the file of
    // owner 0 that holds id 1 before compaction commits.
    let stale = s.table().await.unwrap();
    let merge = owned(&s, &[0], &[1], "updated", Some(2), 3);
    crate::harness::apply(&mut t, &log, &s.app_id, &merge, policy(), &never)
        .await
        .unwrap();
    let compact = tributary::ops::maintenance::Compact::new(stale, None);
    let plan = compact.plan().await.unwrap();
    let report = compact.execute(plan).await.unwrap();
    let by: BTreeMap<&str, _> = report
        .partitions
        .iter()
        .map(|p| (p.partition.as_str(), p))
        .collect();
    assert_eq!(
        by.keys().copied().collect::<Vec<_>>(),
        ["owner=0", "owner=1"]
    );
    let (p0, p1) = (by["owner=0"], by["owner=1"]);
    assert!(p0.conflicts >= 1, "{report:?}");
    assert!(p0.gave_up.is_none() && p1.gave_up.is_none(), "{report:?}");
    assert_eq!((p0.files_removed, p0.files_added), (3, 1), "{report:?}");
    assert_eq!((p1.conflicts, p1.files_removed, p1.files_added), (0, 3, 1));
    assert_ne!(p0.version, p1.version, "a commit per partition");
    let mut want: Vec<(i64, String)> = Vec::new();
    for owner in 0..2i64 {
        for w in 0..3i64 {
            for id in w * 10..w * 10 + 3 {
                let v = if owner == 0 && id == 1 {
                    "updated".to_owned()
                } else {
                    format!("w{w}")
                };
                want.push((owner * 100 + id, v));
            }
        }
    }
    assert_eq!(owned_rows(&s).await, want);
}

/// The scale-out rule: replicas own disjoint Kafka partitions, the table is
/// partitioned by an ownership column, and that column is part of the key (so
/// of the MERGE's join). delta-rs then reads only the window's own partitions,
/// and a replica's MERGE does not conflict with another's that landed first in
/// other partitions. On an unpartitioned table the same pair conflicts, and
/// the second MERGE has to be planned again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_of_replicas_owning_different_partitions_do_not_conflict() {
    async fn conflicts(s: &Scenario, partitioned: bool) -> (bool, Vec<(i64, String)>) {
        owned_table(s, partitioned).await;
        let open = || async { s.table().await.unwrap() };
        let never = || false;
        let owned = |owners: &[i32], ids: &[i64], v: &str, expected: Option<i64>, last: i64| {
            owned(s, owners, ids, v, expected, last)
        };
        // The first rows of both owners arrive in one commit (written before the
        // owners were split between replicas): one file on the unpartitioned
        // table, a file per owner on the partitioned one.
        let (mut a, mut b) = (open().await, open().await);
        let (la, lb) = (TableLog::default(), TableLog::default());
        let first = owned(&[0, 0, 0, 1, 1, 1], &[1, 2, 3, 1, 2, 3], "first", None, 2);
        crate::harness::apply(&mut a, &la, &s.app_id, &first, policy(), &never)
            .await
            .unwrap();
        b.update_state().await.unwrap();
        // Each updates its own owner's rows from the same table version: A lands
        // first, then B's MERGE, planned on the version before A's, meets A's
        // commit (delta-rs' own MERGE, so that it starts from B's stale
        // snapshot; the commit engine refreshes first).
        let (_, sa, _) = crate::harness::apply(
            &mut a,
            &la,
            &s.app_id,
            &owned(&[0, 0], &[1, 2], "second", Some(2), 4),
            policy(),
            &never,
        )
        .await
        .unwrap();
        let mine = owned(&[1, 1], &[2, 3], "second", None, 4);
        let df = deltalake::datafusion::prelude::SessionContext::new()
            .read_batch(mine.changes.rows.clone())
            .unwrap();
        let stale = b
            .clone()
            .merge(df, "t.owner = s.owner AND t.id = s.id")
            .with_source_alias("s")
            .with_target_alias("t")
            .when_matched_update(|u| u.update("v", "s.v"))
            .unwrap()
            .await;
        let conflicted = match stale {
            Ok(_) => false,
            Err(deltalake::DeltaTableError::Transaction {
                source: deltalake::kernel::transaction::TransactionError::CommitConflict(_),
            }) => true,
            Err(e) => panic!("{e}"),
        };
        // B's own path re-reads the table and lands either way.
        let (o, _, _) = crate::harness::apply(&mut b, &lb, &s.app_id, &mine, policy(), &never)
            .await
            .unwrap();
        assert!(matches!(o, CommitOutcome::Committed { .. }), "{o:?}");
        let rows = owned_rows(s).await;
        assert_eq!(sa.conflicts, 0);
        (conflicted, rows)
    }
    let want = rows(&[
        (1, "second"),
        (2, "second"),
        (3, "first"),
        (101, "first"),
        (102, "second"),
        (103, "second"),
    ]);
    let partitioned = Scenario::new("upsert-owned", 2).await;
    let (conflicted, state) = conflicts(&partitioned, true).await;
    assert!(!conflicted, "partitioned by owner: no conflict");
    assert_eq!(state, want);
    let flat = Scenario::new("upsert-flat", 2).await;
    let (conflicted, state) = conflicts(&flat, false).await;
    assert!(conflicted, "unpartitioned: the second MERGE conflicts");
    assert_eq!(state, want);
}

pub(crate) fn merge_offsets(into: &mut BTreeMap<i32, Vec<i64>>, more: BTreeMap<i32, Vec<i64>>) {
    for (p, o) in more {
        into.entry(p).or_default().extend(o);
    }
}

/// event_id -> kind, from the table.
pub(crate) async fn kinds(s: &Scenario) -> BTreeMap<i64, String> {
    let t = s.table().await.unwrap();
    let mut out = BTreeMap::new();
    for b in query(&t, "SELECT event_id, kind FROM t").await {
        let ids = b.column(0).as_primitive::<Int64Type>();
        let kinds = deltalake::arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
        let kinds = kinds.as_string::<i32>();
        for i in 0..b.num_rows() {
            assert!(
                out.insert(ids.value(i), kinds.value(i).to_owned())
                    .is_none(),
                "event {} twice in an upsert table",
                ids.value(i)
            );
        }
    }
    out
}

/// The scenario's config with `mode = "upsert"` and `keys` in `[table]`.
pub(crate) fn upsert_config(s: &Scenario, keys: &str) -> tributary::config::Config {
    upsert_config_with(s, keys, "")
}

/// An upsert table with `keys` (its `[table]` lines), windows of a second,
/// and the sections of `extra`.
pub(crate) fn upsert_config_with(
    s: &Scenario,
    keys: &str,
    extra: &str,
) -> tributary::config::Config {
    let text = s
        .config_toml(&format!("{extra}\n[flush]\nmax_age = \"1s\""))
        .replace(
            "[table]\n",
            &format!("[table]\nmode = \"upsert\"\n{keys}\n"),
        );
    parse_config(&text)
}

pub(crate) fn event_of_kind(i: u64, kind: &str) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&event(i)).unwrap();
    v["kind"] = kind.into();
    v.to_string()
}

/// The daemon's pipeline on an upsert table keyed by a record field: each
/// window lands as one MERGE, later changes of a key replace earlier ones, and
/// records that cannot be changes (a tombstone, which cannot name a key from
/// the value) are rejected and accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_upserts_by_a_record_key() {
    let s = Scenario::new("upsert-pipe", 2).await;
    let cfg = upsert_config(&s, "key = [\"event_id\"]");
    let first: Vec<(i32, &str, Option<String>)> = (0..40u64)
        .map(|i| ((i % 2) as i32, "k", Some(event_of_kind(i, "first"))))
        .collect();
    let mut second: Vec<(i32, &str, Option<String>)> = (0..10u64)
        .map(|i| ((i % 2) as i32, "k", Some(event_of_kind(i, "second"))))
        .collect();
    second.push((0, "k", None)); // a tombstone: no key to delete by
    let summary = two_rounds(&s, &cfg, &first, &second).await;
    assert_eq!(summary.rejected, 1, "the tombstone");
    let got = kinds(&s).await;
    assert_eq!(got.len(), 40);
    for (id, kind) in &got {
        assert_eq!(
            kind,
            if *id < 10 { "second" } else { "first" },
            "event {id}"
        );
    }
    assert!(s.operations().await.iter().any(|o| o == "MERGE"));
    // verify replays the topic and finds every key at its last change.
    let keys = verified_clean(&cfg).await;
    assert_eq!(total(&keys, |p| p.keys), 40);
    assert_eq!(total(&keys, |p| p.changes), 50);
    assert_eq!(total(&keys, |p| p.rejected), 1, "the tombstone");

    // Another writer breaks the table: a key deleted, a value changed, a key
    // renamed (one missing, one extra). verify names each and fails.
    let t = s.table().await.unwrap();
    let (t, _) = t.delete().with_predicate("event_id = 3").await.unwrap();
    let (t, _) = t
        .update()
        .with_predicate("event_id = 12")
        .with_update("kind", "'tampered'")
        .await
        .unwrap();
    t.update()
        .with_predicate("event_id = 20")
        .with_update("event_id", "999")
        .await
        .unwrap();
    let report = verify_keys(&cfg).await;
    let text = tributary::ops::verify::render(&report);
    assert!(!report.clean, "{text}");
    let keys = report.upsert.as_ref().unwrap();
    assert_eq!(total(keys, |p| p.missing_keys), 2, "{text}");
    assert_eq!(total(keys, |p| p.wrong_values), 1, "{text}");
    assert_eq!(total(keys, |p| p.extra_keys), 1, "{text}");
    assert_eq!(total(keys, |p| p.duplicate_keys), 0, "{text}");
    let samples = |f: fn(&tributary::ops::verify::KeyedPartitionReport) -> &Vec<String>| {
        let mut all: Vec<String> = keys.partitions.iter().flat_map(|p| f(p).clone()).collect();
        all.sort();
        all
    };
    assert_eq!(
        samples(|p| &p.missing_sample),
        ["event_id=20", "event_id=3"],
        "{text}"
    );
    assert_eq!(samples(|p| &p.wrong_sample), ["event_id=12"], "{text}");
    assert_eq!(samples(|p| &p.extra_sample), ["event_id=999"], "{text}");
    assert!(text.contains("PROBLEMS FOUND"), "{text}");
}

/// `verify` of an upsert table, which must not fail to run.
pub(crate) async fn verify_keys(
    cfg: &tributary::config::Config,
) -> tributary::ops::verify::VerifyReport {
    tributary::ops::verify::verify(cfg, Duration::from_secs(30))
        .await
        .unwrap()
}

/// The pipeline over two rounds of keyed records, each committed before the
/// next is produced; its summary.
pub(crate) async fn two_rounds(
    s: &Scenario,
    cfg: &tributary::config::Config,
    first: &[(i32, &str, Option<String>)],
    second: &[(i32, &str, Option<String>)],
) -> tributary::pipeline::RunSummary {
    let mut run = crate::ingest::start(cfg.clone());
    let mut produced = produce_keyed(s, first).await;
    run.committed(&s.topic, &last_offsets(&produced)).await;
    merge_offsets(&mut produced, produce_keyed(s, second).await);
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await
}

/// `verify` finds the upsert table clean; its key report.
pub(crate) async fn verified_clean(
    cfg: &tributary::config::Config,
) -> tributary::ops::verify::UpsertReport {
    let report = verify_keys(cfg).await;
    assert!(report.clean, "{}", tributary::ops::verify::render(&report));
    report.upsert.expect("an upsert table's report")
}

/// A count summed over the upsert report's partitions.
pub(crate) fn total(
    r: &tributary::ops::verify::UpsertReport,
    f: impl Fn(&tributary::ops::verify::KeyedPartitionReport) -> u64,
) -> u64 {
    r.partitions.iter().map(f).sum()
}

/// Keyed by the Kafka key: a tombstone deletes its key, a later record brings it
/// back, and a tombstone of a key never seen changes nothing; the offsets of
/// every record are accounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_upserts_by_the_kafka_key_and_tombstones_delete() {
    let s = Scenario::new("upsert-kkey", 1).await;
    // No `key`: the Kafka key (the scenario stores it as `_key`) is the default.
    let cfg = upsert_config(&s, "");
    assert_eq!(
        cfg.table.upsert.as_ref().map(|u| u.key.clone()),
        Some(vec!["_key".to_owned()])
    );
    let first = [
        (0, "a", Some(event_of_kind(1, "a1"))),
        (0, "b", Some(event_of_kind(2, "b1"))),
        (0, "c", Some(event_of_kind(3, "c1"))),
    ];
    let second = [
        (0, "a", Some(event_of_kind(1, "a2"))),
        (0, "b", None),
        (0, "zz", None),
        (0, "c", None),
        (0, "c", Some(event_of_kind(3, "c2"))),
    ];
    let summary = two_rounds(&s, &cfg, &first, &second).await;
    assert_eq!(summary.rejected, 0);
    let got: Vec<(i64, String)> = kinds(&s).await.into_iter().collect();
    assert_eq!(got, rows(&[(1, "a2"), (3, "c2")]));
    assert_eq!(s.stored_offsets(1).await[&0], Some(7));
    assert_eq!(total(&verified_clean(&cfg).await, |p| p.keys), 2);
}

/// The topic's partition count is recorded in an upsert table. A changed
/// count that could apply a moved key's changes out of order (keyed by the
/// Kafka key, no `order_by`) stops the daemon, naming both counts and what to
/// do; once the operator records the new count it runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_partition_count_stops_the_daemon_until_the_operator_accepts_it() {
    use tributary::sink::upsert::partitions;
    let s = Scenario::new("upsert-count", 2).await;
    let cfg = upsert_config(&s, "");
    let first = [
        (0, "a", Some(event_of_kind(1, "a1"))),
        (1, "b", Some(event_of_kind(2, "b1"))),
    ];
    let mut run = crate::ingest::start(cfg.clone());
    let produced = produce_keyed(&s, &first).await;
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await;
    let mut t = s.table().await.unwrap();
    assert_eq!(partitions::recorded(&t, &s.topic), Some(2));

    // As if the table had been written while the topic had one partition.
    partitions::record(&mut t, &s.topic, 1)
        .await
        .unwrap()
        .unwrap();
    // In a group of its own: a daemon that stops at assignment must not hold
    // up the next one's.
    let mut refused = cfg.clone();
    refused.kafka.group_id = format!("{}-refused", cfg.kafka.group_id);
    let err = crate::ingest::start(refused)
        .ended_within(Duration::from_secs(60))
        .await
        .expect_err("a changed partition count stops the daemon")
        .to_string();
    for part in [
        "has 2 partitions",
        "was written with 1",
        "no order_by",
        "tributary.upsert.partitions.",
    ] {
        assert!(err.contains(part), "{part:?} in {err}");
    }
    // The operator accepts the new count: the daemon runs and applies changes.
    partitions::record(&mut t, &s.topic, 2)
        .await
        .unwrap()
        .unwrap();
    let second = [(0, "a", Some(event_of_kind(1, "a2")))];
    let mut run = crate::ingest::start(cfg.clone());
    let produced = produce_keyed(&s, &second).await;
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await;
    let got: Vec<(i64, String)> = kinds(&s).await.into_iter().collect();
    assert_eq!(got, rows(&[(1, "a2"), (2, "b1")]));
}

/// A config file for daemons of the scenario: an upsert table keyed by
/// (`_partition`, `_key`) and partitioned by `_partition` (replicas' MERGEs
/// stay apart), with `flush`.
pub fn owned_upsert_config_file(s: &Scenario, flush: &str) -> std::path::PathBuf {
    owned_upsert_config_file_with(s, flush, "")
}

/// [`owned_upsert_config_file`] with more `[table]` lines.
pub fn owned_upsert_config_file_with(s: &Scenario, flush: &str, table: &str) -> std::path::PathBuf {
    let text = s.config_toml(flush).replace(
        "[table]\n",
        &format!(
            "[table]\nmode = \"upsert\"\nkey = [\"_partition\", \"_key\"]\npartition_by = [\"_partition\"]\n{table}"
        ),
    );
    let cfg = s.dir.path().join("upsert.toml");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// kill -9 at random points with 3 daemons on one upsert table, partitioned by
/// the Kafka partition (which is in the key, so replicas' MERGEs stay apart):
/// every key ends with its last change, none lost, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_three_daemons_on_one_upsert_table_ends_exact() {
    kill_9_with_three_daemons("upsert-kill", "").await;
}

/// The kill -9 scenario on a table with `table` lines (the strategy).
pub(crate) async fn kill_9_with_three_daemons(name: &str, table: &str) {
    use rand::{Rng as _, SeedableRng as _};
    const KEYS: u64 = 300;
    const TOTAL: u64 = 6_000;
    let s = Scenario::new(name, 6).await;
    let cfg =
        owned_upsert_config_file_with(&s, "[flush]\nmax_rows = 300\nmax_age = \"500ms\"", table);
    // Key k always goes to partition k % 6; change j of key j % KEYS carries
    // event_id j, so a key's last change has the greatest event_id.
    let topic = s.topic.clone();
    let brokers = s.servers.brokers.clone();
    let producing = tokio::spawn(async move {
        use rdkafka::producer::FutureRecord;
        let producer = producer(&brokers);
        let mut all: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for batch in (0..TOTAL).collect::<Vec<_>>().chunks(10) {
            for &j in batch {
                let k = j % KEYS;
                let value = event_of_kind(j, "v");
                let key = format!("k{k}");
                let d = producer
                    .send(
                        FutureRecord::to(&topic)
                            .partition((k % 6) as i32)
                            .key(&key)
                            .payload(&value),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
                all.entry(d.partition).or_default().push(d.offset);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        all
    });
    let mut daemons: Vec<Daemon> = (0..3).map(|_| Daemon::start(&cfg, s.dir.path())).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..8 {
        let wait = rng.random_range(1500..4000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let victim = rng.random_range(0..daemons.len());
        daemons[victim].kill9();
        daemons[victim] = Daemon::start(&cfg, s.dir.path());
    }
    let produced = producing.await.unwrap();
    s.wait_caught_up(&produced, 6, Duration::from_secs(180))
        .await;
    for d in &mut daemons {
        d.stop_cleanly().await;
    }
    let t = s.table().await.unwrap();
    let mut got: BTreeMap<String, i64> = BTreeMap::new();
    for b in query(&t, "SELECT _key, event_id FROM t").await {
        let keys = deltalake::arrow::compute::cast(b.column(0), &DataType::Binary).unwrap();
        let keys = keys.as_binary::<i32>();
        let ids = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let k = String::from_utf8_lossy(keys.value(i)).into_owned();
            assert!(
                got.insert(k.clone(), ids.value(i)).is_none(),
                "key {k} twice"
            );
        }
    }
    let want: BTreeMap<String, i64> = (0..KEYS)
        .map(|k| (format!("k{k}"), (TOTAL - KEYS + k) as i64))
        .collect();
    assert_eq!(got.len(), KEYS as usize);
    let wrong: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(v))
        .collect();
    assert!(wrong.is_empty(), "keys not at their last change: {wrong:?}");
    // verify agrees, partition by partition.
    let cfg = parse_config(&std::fs::read_to_string(&cfg).unwrap());
    let keys = verified_clean(&cfg).await;
    assert_eq!(total(&keys, |p| p.keys), KEYS);
    assert_eq!(total(&keys, |p| p.changes), TOTAL);
    assert_eq!(keys.keys_in_several_partitions, 0);
    assert!(
        keys.partitions.iter().all(|p| p.keys == KEYS / 6),
        "{keys:?}"
    );
}

pub(crate) fn dbz(
    op: &str,
    before: Option<String>,
    after: Option<String>,
    with_schema: bool,
) -> String {
    let parse = |s: Option<String>| {
        s.map_or(serde_json::Value::Null, |s| {
            serde_json::from_str(&s).unwrap()
        })
    };
    let envelope = serde_json::json!({
        "before": parse(before),
        "after": parse(after),
        "op": op,
        "source": {"connector": "postgresql", "lsn": 1},
        "ts_ms": 1,
    });
    if with_schema {
        serde_json::json!({"schema": {"type": "struct", "optional": false}, "payload": envelope})
            .to_string()
    } else {
        envelope.to_string()
    }
}

/// Debezium change events (the JSON converter with and without its schema):
/// creates, snapshot reads and updates take `after`, deletes remove the key
/// named by `before`, the tombstone after a delete is accounted for, and an
/// event that cannot be applied is rejected with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_applies_debezium_change_events() {
    let s = Scenario::new("upsert-dbz", 1).await;
    let dead_uri = format!("s3://{}/dead_letters", s.bucket);
    let cfg = upsert_config_with(
        &s,
        "key = [\"event_id\"]\nenvelope = \"debezium\"",
        &format!("[dead_letters]\nuri = \"{dead_uri}\""),
    );
    let ev = |i: u64, kind: &str| Some(event_of_kind(i, kind));
    let first = [
        (0, "1", Some(dbz("c", None, ev(1, "c1"), false))),
        (0, "2", Some(dbz("r", None, ev(2, "r2"), true))),
        (0, "3", Some(dbz("c", None, ev(3, "c3"), false))),
    ];
    let second = [
        (0, "1", Some(dbz("u", ev(1, "c1"), ev(1, "u1"), true))),
        (
            0,
            "2",
            Some(dbz("d", Some(r#"{"event_id":2}"#.into()), None, false)),
        ),
        (0, "2", None), // Debezium's tombstone after the delete
        (0, "9", Some(dbz("t", None, ev(9, "t9"), false))),
        (0, "4", Some(dbz("c", None, ev(4, "c4"), true))),
        (0, "5", Some(dbz("u", None, None, false))),
        (
            0,
            "6",
            Some(dbz("c", None, Some(r#"{"kind":"k6"}"#.into()), true)),
        ),
    ];
    let summary = two_rounds(&s, &cfg, &first, &second).await;
    assert_eq!(
        summary.rejected, 3,
        "the truncate, a row-less and a key-less event"
    );
    let got: Vec<(i64, String)> = kinds(&s).await.into_iter().collect();
    assert_eq!(got, rows(&[(1, "u1"), (3, "c3"), (4, "c4")]));
    assert_eq!(s.stored_offsets(1).await[&0], Some(9));
    // Each rejected event is a dead letter with its reason.
    let dead: Vec<(i64, String)> = crate::ingest::dead_letters(&s, &dead_uri)
        .await
        .into_iter()
        .map(|d| (d.1, d.4))
        .collect();
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert_eq!(dead[0].0, 6);
    assert!(
        dead[0].1.contains("a truncate (op `t`) is not applied"),
        "{dead:?}"
    );
    assert_eq!(dead[1].0, 8);
    assert!(dead[1].1.contains("no `after` row"), "{dead:?}");
    assert_eq!(dead[2].0, 9);
    assert!(dead[2].1.contains("`event_id` is null"), "{dead:?}");
    let keys = verified_clean(&cfg).await;
    assert_eq!(total(&keys, |p| p.keys), 3);
    assert_eq!(total(&keys, |p| p.rejected), 3, "the dead letters");
}

/// Rows flattened by Debezium's `ExtractNewRecordState`
/// (`envelope = "debezium-flattened"`): a row upserts its key, `__deleted`
/// ("true") or `__op` ("d") deletes it, Debezium's tombstone after a delete is
/// accounted for, and `verify` agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_applies_flattened_debezium_rows() {
    let s = Scenario::new("upsert-flat", 1).await;
    let cfg = upsert_config(
        &s,
        "key = [\"event_id\"]\nenvelope = \"debezium-flattened\"",
    );
    let flat = |i: u64, kind: &str, marker: (&str, &str)| {
        let mut v: serde_json::Value = serde_json::from_str(&event_of_kind(i, kind)).unwrap();
        v[marker.0] = marker.1.into();
        Some(v.to_string())
    };
    let first = [
        (0, "1", flat(1, "c1", ("__deleted", "false"))),
        (0, "2", flat(2, "c2", ("__op", "c"))),
        (0, "3", flat(3, "c3", ("__op", "r"))),
        (0, "4", Some(event_of_kind(4, "c4"))), // no marker: a row
    ];
    let second = [
        (0, "1", flat(1, "u1", ("__op", "u"))),
        (0, "2", flat(2, "gone", ("__deleted", "true"))),
        (0, "2", None), // Debezium's tombstone after the delete
        (0, "3", flat(3, "gone", ("__op", "d"))),
    ];
    let summary = two_rounds(&s, &cfg, &first, &second).await;
    assert_eq!(summary.rejected, 0);
    let got: Vec<(i64, String)> = kinds(&s).await.into_iter().collect();
    assert_eq!(got, rows(&[(1, "u1"), (4, "c4")]));
    assert_eq!(s.stored_offsets(1).await[&0], Some(7));
    assert_eq!(total(&verified_clean(&cfg).await, |p| p.keys), 2);
}

/// `order_by = "source.lsn"`: Debezium's own order, kept in the table's
/// `_source_lsn` column, so that a change older than the row (a replay, a
/// connector restart resending events) never replaces or deletes it, in the
/// window or in the table; `verify` judges by the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_changes_ordered_by_the_source_lsn_never_go_back() {
    let s = Scenario::new("upsert-lsn", 1).await;
    let cfg = upsert_config(
        &s,
        "key = [\"event_id\"]\nenvelope = \"debezium\"\norder_by = \"source.lsn\"",
    );
    assert_eq!(
        cfg.table.upsert.as_ref().and_then(|u| u.order_by.clone()),
        Some("_source_lsn".to_owned())
    );
    let at = |op: &str, i: u64, kind: &str, lsn: i64| {
        let row = Some(event_of_kind(i, kind));
        let (before, after) = if op == "d" { (row, None) } else { (None, row) };
        let mut v: serde_json::Value =
            serde_json::from_str(&dbz(op, before, after, false)).unwrap();
        v["source"]["lsn"] = lsn.into();
        Some(v.to_string())
    };
    let first = [
        (0, "1", at("c", 1, "a10", 10)),
        (0, "2", at("c", 2, "b20", 20)),
    ];
    let second = [
        (0, "1", at("u", 1, "old", 5)),  // older than the row: ignored
        (0, "1", at("d", 1, "old", 3)),  // an older delete: ignored
        (0, "2", at("u", 2, "b30", 30)), // newer: applied
        (0, "3", at("u", 3, "c50", 50)), // read first, but the newest of 3
        (0, "3", at("u", 3, "c40", 40)),
    ];
    let summary = two_rounds(&s, &cfg, &first, &second).await;
    assert_eq!(summary.rejected, 0);
    let got: Vec<(i64, String)> = kinds(&s).await.into_iter().collect();
    assert_eq!(got, rows(&[(1, "a10"), (2, "b30"), (3, "c50")]));
    let t = s.table().await.unwrap();
    let mut lsns = Vec::new();
    for b in query(&t, "SELECT event_id, _source_lsn FROM t ORDER BY event_id").await {
        let l = b.column(1).as_primitive::<Int64Type>();
        lsns.extend((0..b.num_rows()).map(|i| l.value(i)));
    }
    assert_eq!(lsns, [10, 30, 50]);
    assert_eq!(total(&verified_clean(&cfg).await, |p| p.keys), 3);
}
