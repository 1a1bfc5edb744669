//! Scale of the offset bookkeeping: reading the stored offsets of many partitions
//! must cost one pass over the log, not one replay per partition, and a writer's
//! pre-commit check must read only the commits that landed since its last one.
//! Counted at the S3 server's door (a proxy in front of moto).

use std::time::Duration;

use tributary::record::TopicPartition;
use tributary::sink::commit::{CommitOutcome, PartitionCommit, TableLog};

use crate::harness::{CommitRequest, Scenario, policy};

/// Partitions; `TRIBUTARY_SCALE_PARTITIONS` overrides it to take figures at
/// other sizes (the assertions scale with it).
fn partitions() -> i32 {
    std::env::var("TRIBUTARY_SCALE_PARTITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}
const VERSIONS: i32 = 20;

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
        let (o, _) = crate::harness::commit(&mut table, &store, &s.app_id, &req, policy(), &never)
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

/// Records of `{"id": i, "blob": <hex>}`, 2 KB each, that compress to about half
/// (random hex): enough encoded bytes per table to overflow a small budget.
fn blob_record(i: u64, seed: &mut u64) -> String {
    use std::fmt::Write;
    let mut blob = String::with_capacity(2048);
    for _ in 0..128 {
        // xorshift64: incompressible enough, and no dependency.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let _ = write!(blob, "{:016x}", *seed);
    }
    format!("{{\"id\":{i},\"blob\":\"{blob}\"}}")
}

const BLOB_SCHEMA: &str = r#"{"type":"struct","fields":[
  {"name":"id","type":"long","nullable":false,"metadata":{}},
  {"name":"blob","type":"string","nullable":true,"metadata":{}}]}"#;

/// A `{topic}` route over many topics keeps all its open windows together within
/// `flush.memory_budget`: when they reach it, the largest are committed early
/// (counted), so what the windows hold stays bounded whatever the number of
/// tables, and every record still lands exactly once. Without the budget the 16
/// windows would each hold their whole topic until `max_age`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tables_hold_their_windows_within_the_memory_budget() {
    const TOPICS: u64 = 16;
    const PER_TOPIC: u64 = 400;
    const BUDGET: u64 = 1 << 20;
    let s = Scenario::new("many-tables", 1).await;
    let producer = crate::harness::producer(&s.servers.brokers);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut produced = std::collections::BTreeMap::new();
    for t in 0..TOPICS {
        let topic = format!("{}-{t}", s.topic);
        crate::harness::create_topic(&s.servers.brokers, &topic, 1).await;
        let values: Vec<(i32, String)> = (0..PER_TOPIC)
            .map(|i| (0, blob_record(i, &mut seed)))
            .collect();
        let p = crate::harness::produce(&producer, &topic, values.into_iter()).await;
        produced.insert(topic, p);
    }
    let schema = s.dir.path().join("blob.json");
    std::fs::write(&schema, BLOB_SCHEMA).unwrap();
    let toml = s
        .config_toml("[flush]\nmax_age = \"10s\"\nmemory_budget = \"1 MiB\"\n")
        .replace(
            &format!("topics = [\"{}\"]", s.topic),
            &format!(
                "topic_pattern = \"^{}-.*\"\nmax_chunk_records = 100",
                s.topic
            ),
        )
        .replace(&s.table_uri(), &format!("s3://{}/t/{{topic}}", s.bucket))
        .replace(
            &crate::harness::demo_schema_path().display().to_string(),
            &schema.display().to_string(),
        );
    let run = crate::ingest::start(crate::harness::parse_config(&toml));
    let stats = run.stats.clone();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (stats, peak) = (stats.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                let held = stats
                    .windows_held_bytes
                    .load(std::sync::atomic::Ordering::Relaxed);
                peak.fetch_max(held, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let total = TOPICS * PER_TOPIC;
    crate::harness::eventually(Duration::from_secs(120), "every topic committed", || {
        let rows = stats
            .rows_committed
            .load(std::sync::atomic::Ordering::Relaxed);
        async move { (rows >= total).then_some(()) }
    })
    .await;
    sampler.abort();
    run.stop().await;
    let early = stats
        .windows_flushed_early
        .load(std::sync::atomic::Ordering::Relaxed);
    let files = stats
        .files_committed
        .load(std::sync::atomic::Ordering::Relaxed);
    let bytes = stats
        .bytes_committed
        .load(std::sync::atomic::Ordering::Relaxed);
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{TOPICS} tables, budget {BUDGET} B: peak held {peak} B, {early} windows flushed early, \
         {files} files, {bytes} B committed"
    );
    for (topic, p) in &produced {
        let got = s.rows_at(&format!("s3://{}/t/{topic}", s.bucket)).await;
        let (lost, duplicated) = crate::harness::diff(&got, p);
        assert_eq!(
            (got.len() as u64, lost, duplicated),
            (PER_TOPIC, 0, 0),
            "{topic}"
        );
    }
    assert!(early > 0, "the budget never flushed a window early");
    assert!(
        bytes > 3 * BUDGET,
        "the data ({bytes} B) must exceed the budget for the test to mean anything"
    );
    // The chunk being written (100 records: about 200 KB decoded and 100 KB
    // encoded) lands before the budget is checked again, and the encoders count
    // the batches queued to them only once written; never the whole data.
    assert!(
        peak <= BUDGET + 768 * 1024,
        "the windows held {peak} B at their peak, over the {BUDGET} B budget"
    );
}

/// What a table whose log was grown to `versions` first costs, in `_delta_log`
/// requests: LIST pages of each of three commits (with a checkpoint due at every
/// commit), and (LIST pages, GETs) of a start: loading the table and reading its
/// stored offsets. Also how long the growing took.
async fn log_requests(versions: u64) -> (Vec<u64>, (u64, u64), Duration) {
    let s = Scenario::new("long-log", 1).await;
    let proxy = s.storage_proxy().await;
    let text = s.config_toml_via(
        &proxy,
        "[table.properties]\n\"delta.checkpointInterval\" = \"1\"\n",
    );
    let cfg = crate::harness::parse_config(&text);
    let mut table = tributary::sink::table::open_or_create(&cfg.table, &cfg.storage, None)
        .await
        .unwrap()
        .table;
    let began = std::time::Instant::now();
    if versions > 0 {
        crate::long_log::grow_log(&mut table, versions).await;
    }
    let grown = began.elapsed();
    let store = TableLog::default();
    let never = || false;
    let tp = TopicPartition::new(s.topic.as_str(), 0);
    let mut lists = Vec::new();
    for v in 0..3i64 {
        let before = proxy.log_lists();
        let req = CommitRequest {
            adds: vec![],
            partitions: vec![PartitionCommit {
                tp: tp.clone(),
                expected: (v > 0).then(|| v - 1),
                last: v,
            }],
        };
        let (o, _) = crate::harness::commit(&mut table, &store, &s.app_id, &req, policy(), &never)
            .await
            .unwrap();
        assert!(matches!(o, CommitOutcome::Committed { .. }), "{o:?}");
        lists.push(proxy.log_lists() - before);
    }
    // A start: the table reads back at the last commit, its offset there.
    let (lists_before, gets_before) = (proxy.log_lists(), proxy.log_reads());
    let fresh = tributary::sink::table::load(&cfg.table.uri, &cfg.storage)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fresh.version(), Some(versions + 3));
    let stored =
        tributary::sink::table::stored_offsets(&fresh, &s.app_id, std::slice::from_ref(&tp))
            .await
            .unwrap();
    assert_eq!(stored[&tp], Some(2));
    let start = (
        proxy.log_lists() - lists_before,
        proxy.log_reads() - gets_before,
    );
    use deltalake::logstore::object_store::ObjectStoreExt as _;
    let checkpoint = fresh
        .log_store()
        .object_store(None)
        .head(&deltalake::Path::from(format!(
            "_delta_log/{:020}.checkpoint.parquet",
            versions + 3
        )))
        .await;
    assert!(checkpoint.is_ok(), "the checkpoint of the last commit");
    (lists, start, grown)
}

/// A long log costs a commit and a start no more log requests than a fresh
/// table. With a checkpoint due at every commit, the expired-log cleanup after it
/// reads only the expired part of the log (none here: every file is new) and
/// stops; delta-rs' cleanup listed all of it, a page per 1,000 files, after every
/// checkpoint. A start reads the log from its last checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_log_adds_no_listing_of_the_whole_log_to_a_commit() {
    const LONG: u64 = 5_000;
    let (short, short_start, _) = log_requests(0).await;
    let (long, long_start, grown) = log_requests(LONG).await;
    println!(
        "per commit with a checkpoint, LIST pages: fresh table {short:?}, \
         a log of {LONG} versions (grown in {:.1} s) {long:?}; \
         a start (LIST pages, GETs): fresh {short_start:?}, long {long_start:?}",
        grown.as_secs_f64()
    );
    assert_eq!(
        long, short,
        "LIST pages per commit grew with the {LONG}-version log"
    );
    assert_eq!(
        long_start, short_start,
        "a start's log requests grew with the {LONG}-version log"
    );
}

/// Several writers on one table: each reads the others' commits before its own
/// (delta-rs' table update, then the offset store's compare). Each foreign commit
/// file must cost one GET per writer, not one for the kernel, one for delta-rs'
/// file list and one for the offset store; and a writer never reads back the
/// commit it has just written. Writer A stands for another process: a plain
/// delta-rs handle, outside this process's commit-file cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_reads_each_foreign_commit_once() {
    const FOREIGN: i64 = 12;
    let s = Scenario::new("two-writers", 1).await;
    let proxy = s.storage_proxy().await;
    let text = s.config_toml_via(&proxy, "");
    let cfg = crate::harness::parse_config(&text);
    let (mut b, b_log) = (
        tributary::sink::table::open_or_create(&cfg.table, &cfg.storage, None)
            .await
            .unwrap()
            .table,
        TableLog::default(),
    );
    let mut a = deltalake::DeltaTableBuilder::from_url(cfg.table.uri.clone())
        .unwrap()
        .with_storage_options(cfg.storage.to_options())
        .load()
        .await
        .unwrap();
    let a_log = TableLog::default();
    let never = || false;
    let one = |p: i32, expected: Option<i64>, last: i64| CommitRequest {
        adds: vec![],
        partitions: vec![PartitionCommit {
            tp: TopicPartition::new(s.topic.as_str(), p),
            expected,
            last,
        }],
    };
    let landed = |o: CommitOutcome| assert!(matches!(o, CommitOutcome::Committed { .. }), "{o:?}");
    // B's first commits: the first replays the log, the others follow it.
    let mut own = Vec::new();
    for v in 0..4 {
        let before = proxy.log_reads();
        let req = one(1, (v > 0).then(|| v - 1), v);
        let (o, _) = crate::harness::commit(&mut b, &b_log, &s.app_id, &req, policy(), &never)
            .await
            .unwrap();
        landed(o);
        own.push(proxy.log_reads() - before);
    }
    for v in 0..FOREIGN {
        let req = one(0, (v > 0).then(|| v - 1), v);
        let (o, _) = crate::harness::commit(&mut a, &a_log, &s.app_id, &req, policy(), &never)
            .await
            .unwrap();
        landed(o);
    }
    let before = proxy.log_reads();
    let (o, _) = crate::harness::commit(
        &mut b,
        &b_log,
        &s.app_id,
        &one(1, Some(3), 4),
        policy(),
        &never,
    )
    .await
    .unwrap();
    landed(o);
    let catch_up = proxy.log_reads() - before;
    println!(
        "log GETs: B's own commits {own:?}; B's commit after {FOREIGN} of A's: {catch_up} \
         (B's store read {:?})",
        b_log.offsets.reads()
    );
    // B's own commits after its first read one file only: `_last_checkpoint`,
    // which the kernel checks at every table update (it can change; not kept).
    assert!(
        own[1..].iter().all(|&n| n <= 1),
        "a writer read its own commits back: {own:?}"
    );
    // B reads each of A's commits once (and `_last_checkpoint`).
    assert!(
        catch_up <= FOREIGN as u64 + 1,
        "B made {catch_up} log GETs to catch up on {FOREIGN} foreign commits"
    );
}
