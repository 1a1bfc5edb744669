//! Scale of the offset bookkeeping: reading the stored offsets of many partitions
//! must cost one pass over the log, not one replay per partition, and a writer's
//! pre-commit check must read only the commits that landed since its last one.
//! Counted at the S3 server's door (a proxy in front of moto).

use std::time::Duration;

use tributary::record::TopicPartition;
use tributary::sink::commit::{
    self, CommitOutcome, CommitRequest, PartitionCommit, RetryPolicy, TableLog,
};

use crate::harness::Scenario;

/// Partitions; `TRIBUTARY_SCALE_PARTITIONS` overrides it to take figures at
/// other sizes (the assertions scale with it).
fn partitions() -> i32 {
    std::env::var("TRIBUTARY_SCALE_PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}
const VERSIONS: i32 = 20;

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_conflict_retries: 10,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(100),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_partitions_stored_offsets_cost_one_log_pass_not_one_per_partition() {
    let s = Scenario::new("many-parts", 1).await;
    let proxy = s.storage_proxy().await;
    let text = s.config_toml_via(&proxy, "");
    let cfg = crate::harness::parse_config(&text);
    let mut table = tributary::sink::table::open_or_create(&cfg.table, &cfg.storage, None)
        .await
        .unwrap()
        .table;
    #[allow(non_snake_case)]
    let PARTITIONS = partitions();
    let tps: Vec<TopicPartition> = (0..PARTITIONS)
        .map(|p| TopicPartition::new(s.topic.as_str(), p))
        .collect();

    // A sparse topic: each commit carries a different slice of the partitions (12
    // of them), so most partitions' txns sit deep in the log, and 16 partitions
    // have never committed at all.
    let store = TableLog::default();
    let never = || false;
    let per_commit = (PARTITIONS * 12 / 256).max(1);
    let mut commit_ms = Vec::new();
    let mut check_reads = Vec::new();
    for v in 0..VERSIONS {
        let partitions = (0..per_commit)
            .map(|i| PartitionCommit {
                tp: tps[(v * per_commit + i) as usize].clone(),
                expected: None,
                last: i64::from(v),
            })
            .collect();
        let before = proxy.log_reads();
        let began = std::time::Instant::now();
        let req = CommitRequest {
            adds: vec![],
            partitions,
        };
        let (o, _) = commit::commit(&mut table, &store, &s.app_id, &req, policy(), &never)
            .await
            .unwrap();
        assert!(matches!(o, CommitOutcome::Committed { .. }), "{o:?}");
        check_reads.push(proxy.log_reads() - before);
        commit_ms.push(began.elapsed().as_millis());
    }

    // A restart (or an assign, or a rewind) reads every partition's offset.
    let before = proxy.log_reads();
    let fresh = tributary::sink::table::load(&cfg.table.uri, &cfg.storage)
        .await
        .unwrap()
        .unwrap();
    let load_reads = proxy.log_reads() - before;
    let before = proxy.log_reads();
    let began = std::time::Instant::now();
    let stored = tributary::sink::table::stored_offsets(&fresh, &s.app_id, &tps)
        .await
        .unwrap();
    let offset_reads = proxy.log_reads() - before;
    let read_ms = began.elapsed().as_millis();
    println!(
        "commit ms per version (dev build): {commit_ms:?}; reading all stored offsets: {read_ms} ms"
    );
    println!(
        "{PARTITIONS} partitions at version {VERSIONS}: table load {load_reads} log GETs, \
         stored offsets {offset_reads} log GETs; pre-commit checks {check_reads:?}"
    );

    for (i, tp) in tps.iter().enumerate() {
        let want = (i < (VERSIONS * per_commit) as usize).then(|| i as i64 / per_commit as i64);
        assert_eq!(stored[tp], want, "{tp}");
    }
    // One pass reads each commit file at most twice (the kernel reads back to the
    // table's metadata, then the txns); one replay per partition reads thousands
    // (each partition walks back to its txn, the 16 absent ones the whole log).
    assert!(
        offset_reads <= 2 * VERSIONS as u64 + 4,
        "reading {PARTITIONS} stored offsets took {offset_reads} log GETs for {VERSIONS} versions"
    );
    // A commit's own log reads (delta-rs' update and post-commit reads included)
    // stay constant as the log grows: the writer's store replayed once, at its
    // first check, and then followed its own commits without reading them back.
    let later = &check_reads[1..];
    assert!(
        later.iter().all(|&n| n <= 6) && later.first() == later.last(),
        "log GETs per commit grew with the log: {check_reads:?}"
    );
    assert_eq!(
        store.offsets.reads(),
        (1, 0),
        "one full replay, no commit read back"
    );
}
