//! The commit compare-and-swap, on a local table: a stale expected offset never
//! lands data, a repeated commit is recognised, and concurrent commits for the same
//! partition land at most once.

use crate::harness::{CommitRequest, policy};
use tributary::config::{Compression, MetadataColumns, StorageConfig, TableConfig};
use tributary::record::TopicPartition;
use tributary::schema::parse_schema_json;
use tributary::sink::commit::{CommitOutcome, PartitionCommit, TableLog};

async fn local_table(dir: &std::path::Path) -> deltalake::DeltaTable {
    let cfg = TableConfig {
        uri_template: None,
        uri: url::Url::from_directory_path(dir).unwrap(),
        schema: Some(parse_schema_json(tributary::ops::demo::DEMO_SCHEMA).unwrap()),
        schema_path: Some("demo_events.json".into()),
        partition_by: vec![],
        compression: Compression::Snappy,
        properties: Default::default(),
        metadata_columns: MetadataColumns::default(),
        row_group_rows: 4096,
        transform: Default::default(),
        upsert: None,
    };
    tributary::sink::table::open_or_create(&cfg, &StorageConfig::default(), None)
        .await
        .unwrap()
        .table
}

fn req(expected: Option<i64>, last: i64) -> CommitRequest {
    CommitRequest {
        adds: vec![],
        partitions: vec![PartitionCommit {
            tp: TopicPartition::new("t", 0),
            expected,
            last,
        }],
    }
}

#[tokio::test]
async fn stale_expected_offsets_never_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = local_table(dir.path()).await;
    let store = TableLog::default();
    let never = || false;
    let (o, _) = crate::harness::commit(&mut t, &store, "app", &req(None, 9), policy(), &never)
        .await
        .unwrap();
    assert!(matches!(o, CommitOutcome::Committed { version: 1 }));
    // Same request again (a retry after a lost response): recognised, not re-written.
    let (o, _) = crate::harness::commit(&mut t, &store, "app", &req(None, 9), policy(), &never)
        .await
        .unwrap();
    assert_eq!(o, CommitOutcome::AlreadyCommitted);
    // A worker that still believes the partition is empty is stale.
    let (o, _) = crate::harness::commit(&mut t, &store, "app", &req(None, 20), policy(), &never)
        .await
        .unwrap();
    assert_eq!(
        o,
        CommitOutcome::Stale {
            partitions: vec![(TopicPartition::new("t", 0), Some(9))]
        }
    );
    // Another app id is independent.
    let (o, _) = crate::harness::commit(&mut t, &store, "other", &req(None, 3), policy(), &never)
        .await
        .unwrap();
    assert!(matches!(o, CommitOutcome::Committed { version: 2 }));
    t.update_state().await.unwrap();
    assert_eq!(t.version(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_for_one_partition_land_once() {
    let dir = tempfile::tempdir().unwrap();
    let t = local_table(dir.path()).await;
    // Eight writers all believe offsets 0..=99 are theirs to commit next.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let mut t = t.clone();
        tasks.push(tokio::spawn(async move {
            let never = || false;
            crate::harness::commit(
                &mut t,
                &TableLog::default(),
                "app",
                &req(None, 99 + w),
                policy(),
                &never,
            )
            .await
            .unwrap()
            .0
        }));
    }
    let mut committed = 0;
    for task in tasks {
        match task.await.unwrap() {
            CommitOutcome::Committed { .. } => committed += 1,
            CommitOutcome::Stale { .. } => {}
            CommitOutcome::AlreadyCommitted => {
                panic!("different ranges cannot be already committed")
            }
        }
    }
    assert_eq!(committed, 1, "exactly one writer lands the range");
}

#[tokio::test]
async fn an_offset_store_follows_other_writers_commits_without_replaying_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = local_table(dir.path()).await;
    let mut b = a.clone();
    let (mine, theirs) = (TableLog::default(), TableLog::default());
    let never = || false;
    let tp = |p| TopicPartition::new("t", p);
    let one = |p, expected, last| CommitRequest {
        adds: vec![],
        partitions: vec![PartitionCommit {
            tp: tp(p),
            expected,
            last,
        }],
    };
    crate::harness::commit(&mut a, &mine, "app", &one(0, None, 5), policy(), &never)
        .await
        .unwrap();
    // Another replica commits partitions 1 and 2, twice each.
    for last in [3, 8] {
        for p in [1, 2] {
            let expected = (last == 8).then_some(3);
            let (o, _) = crate::harness::commit(
                &mut b,
                &theirs,
                "app",
                &one(p, expected, last),
                policy(),
                &never,
            )
            .await
            .unwrap();
            assert!(matches!(o, CommitOutcome::Committed { .. }), "{o:?}");
        }
    }
    a.update_state().await.unwrap();
    let seen = mine
        .offsets
        .offsets(&a, "app", &[tp(0), tp(1), tp(2), tp(3)])
        .await
        .unwrap();
    assert_eq!(seen[&tp(0)], Some(5));
    assert_eq!(seen[&tp(1)], Some(8));
    assert_eq!(seen[&tp(2)], Some(8));
    assert_eq!(seen[&tp(3)], None);
    // The four foreign commits were read one file each; the log was replayed once.
    let (replays, commits_read) = mine.offsets.reads();
    assert_eq!((replays, commits_read), (1, 4));
    // delta-rs' own per-id lookup agrees.
    for p in 0..4 {
        let app = tributary::sink::table::txn_app_id("app", &tp(p));
        let theirs = a
            .snapshot()
            .unwrap()
            .transaction_version(a.log_store().as_ref(), app)
            .await
            .unwrap();
        assert_eq!(theirs, seen[&tp(p)]);
    }
}

/// A checkpoint that fails after its commit landed: the commit is reported
/// committed (not failed, not "already committed"), and the checkpoint is written
/// after the next commit instead of being skipped until the next interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_failure_after_a_landed_commit_is_retried_and_the_commit_counts() {
    let s = crate::harness::Scenario::new("checkpoint-failure", 1).await;
    let proxy = s.storage_proxy().await;
    let text = s.config_toml_via(
        &proxy,
        "[table.properties]\n\"delta.checkpointInterval\" = \"2\"\n",
    );
    let cfg = crate::harness::parse_config(&text);
    let mut t = tributary::sink::table::open_or_create(&cfg.table, &cfg.storage, None)
        .await
        .unwrap()
        .table;
    let log = TableLog::default();
    let never = || false;
    // Version 1 is due for a checkpoint ((1 + 1) % 2 == 0); its PUT is refused.
    proxy.refuse(Some(".checkpoint.parquet"));
    let (o, stats) =
        crate::harness::commit(&mut t, &log, &s.app_id, &req(None, 9), policy(), &never)
            .await
            .unwrap();
    assert_eq!(o, CommitOutcome::Committed { version: 1 });
    assert_eq!(
        stats.attempts, 1,
        "the checkpoint failure did not fail the commit"
    );
    let listed = |t: &deltalake::DeltaTable| {
        let store = t.log_store().object_store(None);
        async move {
            use futures::TryStreamExt;
            let prefix = deltalake::Path::from("_delta_log");
            store
                .list(Some(&prefix))
                .map_ok(|m| m.location.to_string())
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .into_iter()
                .filter(|p| p.contains(".checkpoint."))
                .collect::<Vec<_>>()
        }
    };
    assert!(
        listed(&t).await.is_empty(),
        "the refused checkpoint is absent"
    );
    // Version 2 is not at the interval, but the failed checkpoint is retried.
    proxy.refuse(None);
    let (o, _) =
        crate::harness::commit(&mut t, &log, &s.app_id, &req(Some(9), 20), policy(), &never)
            .await
            .unwrap();
    assert_eq!(o, CommitOutcome::Committed { version: 2 });
    let written = listed(&t).await;
    assert_eq!(written.len(), 1, "{written:?}");
    assert!(
        written[0].ends_with("00000000000000000002.checkpoint.parquet"),
        "{written:?}"
    );
    // The table reads back from the checkpoint with the offsets intact.
    let fresh = tributary::sink::table::load(&cfg.table.uri, &cfg.storage)
        .await
        .unwrap()
        .unwrap();
    let tp = TopicPartition::new("t", 0);
    assert_eq!(
        tributary::sink::table::stored_offset(&fresh, &s.app_id, &tp)
            .await
            .unwrap(),
        Some(20)
    );
}
