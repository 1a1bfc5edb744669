//! Merge-on-read upsert tables (`upsert_strategy = "merge-on-read"`) written by
//! the pipeline against the real servers (Apache Kafka, moto S3): windows of
//! updates, deletes and re-inserts end exact and rewrite no file; a foreign
//! writer and a compaction beside the daemon are seen by its key index; kill -9
//! of replicas ends exact; `verify` finds the table clean and fails it when a
//! deletion vector is tampered with.

use std::collections::{BTreeMap, HashSet};
use std::process::Command;
use std::time::Duration;

use deltalake::arrow::array::{Int64Array, RecordBatch};
use deltalake::arrow::datatypes::{DataType, Field, Schema};
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, Add};
use deltalake::logstore::object_store::ObjectStoreExt as _;
use deltalake::protocol::DeltaOperation;
use tributary::sink::dv;

use crate::harness::*;
use crate::upsert::{
    event_of_kind, kill_9_with_three_daemons, kinds, merge_offsets, total, upsert_config,
    verified_clean, verify_keys,
};

const ON_READ: &str = "upsert_strategy = \"merge-on-read\"";

/// Rounds of keyed records through one pipeline, each committed before the
/// next is produced; every offset produced.
async fn rounds(
    s: &Scenario,
    cfg: &tributary::config::Config,
    rounds: &[Vec<(i32, String, Option<String>)>],
) -> BTreeMap<i32, Vec<i64>> {
    let mut run = crate::ingest::start(cfg.clone());
    let mut produced: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for round in rounds {
        let records: Vec<(i32, &str, Option<&String>)> = round
            .iter()
            .map(|(p, k, v)| (*p, k.as_str(), v.as_ref()))
            .collect();
        merge_offsets(&mut produced, produce_keyed(s, &records).await);
        run.committed(&s.topic, &last_offsets(&produced)).await;
    }
    run.stop().await;
    produced
}

/// Key `k{i}` on partition `i % 2` with event `i` of `kind` (None: a tombstone).
fn change(i: u64, kind: Option<&str>) -> (i32, String, Option<String>) {
    (
        (i % 2) as i32,
        format!("k{i}"),
        kind.map(|k| event_of_kind(i, k)),
    )
}

/// Every commit's actions, version by version.
async fn commits(t: &deltalake::DeltaTable) -> Vec<Vec<serde_json::Value>> {
    let last = t.version().unwrap();
    let mut out = Vec::new();
    for v in 0..=last {
        let bytes = t.log_store().read_commit_entry(v).await.unwrap().unwrap();
        out.push(
            bytes
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_slice(l).unwrap())
                .collect(),
        );
    }
    out
}

/// Files the commits rewrote: removed without being added again under their
/// own path with a deletion vector in the same commit. And the number of
/// files given a vector.
fn rewritten_and_revectored(commits: &[Vec<serde_json::Value>]) -> (Vec<String>, usize) {
    let (mut rewritten, mut revectored) = (Vec::new(), 0);
    for actions in commits {
        let readded: HashSet<&str> = actions
            .iter()
            .filter_map(|a| a.get("add"))
            .filter(|add| add["deletionVector"].is_object())
            .filter_map(|add| add["path"].as_str())
            .collect();
        for rm in actions.iter().filter_map(|a| a.get("remove")) {
            let path = rm["path"].as_str().unwrap();
            if readded.contains(path) {
                revectored += 1;
            } else {
                rewritten.push(path.to_owned());
            }
        }
    }
    (rewritten, revectored)
}

/// By the Kafka key, over six windows: one key updated in every window, a
/// key deleted then re-inserted, tombstones of a key never seen, a batch of
/// updates. The table ends with each key's last change once, upgraded to
/// deletion vectors; no commit rewrote a file (each window's old rows are
/// deleted by vectors); the offsets and `verify` agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_on_read_windows_update_delete_and_reinsert_rewriting_no_file() {
    let s = Scenario::new("mor-kkey", 2).await;
    let cfg = upsert_config(&s, ON_READ);
    let mut plan: Vec<Vec<(i32, String, Option<String>)>> =
        vec![(0..40).map(|i| change(i, Some("r0"))).collect()];
    for n in 1..=5u64 {
        let kind = format!("r{n}");
        let mut round = vec![change(7, Some(&kind))];
        match n {
            1 => round.extend([change(3, None), change(900, None)]),
            2 => round.push(change(3, Some("back"))),
            3 => round.push(change(11, None)),
            4 => round.extend((20..30).map(|i| change(i, Some("r4")))),
            _ => round.push(change(7, Some("last"))),
        }
        plan.push(round);
    }
    let produced = rounds(&s, &cfg, &plan).await;

    let mut want: BTreeMap<i64, String> = (0..40).map(|i| (i, "r0".to_owned())).collect();
    want.insert(7, "last".into());
    want.insert(3, "back".into());
    want.remove(&11);
    for i in 20..30 {
        want.insert(i, "r4".into());
    }
    assert_eq!(kinds(&s).await, want);
    assert_eq!(s.stored_offsets(2).await, last_offsets(&produced));

    let t = s.table().await.unwrap();
    assert!(dv::enabled(&t).unwrap(), "the table was upgraded");
    let protocol = t.snapshot().unwrap().protocol().clone();
    assert_eq!(
        (protocol.min_reader_version(), protocol.min_writer_version()),
        (3, 7)
    );
    let (rewritten, revectored) = rewritten_and_revectored(&commits(&t).await);
    assert!(rewritten.is_empty(), "files rewritten: {rewritten:?}");
    assert!(revectored >= 5, "every window deleted by vectors");
    let ops = s.operations().await;
    assert_eq!(
        ops.iter().filter(|o| *o == "MERGE").count(),
        6,
        "one commit per window: {ops:?}"
    );
    let keys = verified_clean(&cfg).await;
    assert_eq!(total(&keys, |p| p.keys), 39);
    // status counts the rows the vectors delete: 56 written (40, then 1, 2,
    // 1, 11 and 1 a window), 17 superseded or deleted, 39 live.
    let status = tributary::ops::status::status(&cfg, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(
        (status.files.rows, status.files.deleted_rows),
        (56, 17),
        "{:?}",
        status.files
    );
    assert!(status.files.files_with_vectors > 0);
    let text = tributary::ops::status::render(&status);
    assert!(
        text.contains("deleted      17 of 56 rows (30.4%)"),
        "{text}"
    );
}

/// One integer key column (the index's exact path, 8 bytes a row): `verify`
/// finds the table clean; a deletion vector file whose bytes are damaged
/// makes it fail (and clean again once they are back), and a vector that
/// hides one more live row is found as that key missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_fails_a_merge_on_read_table_whose_deletion_vector_is_tampered_with() {
    let s = Scenario::new("mor-verify", 2).await;
    let cfg = upsert_config(&s, &format!("key = [\"event_id\"]\n{ON_READ}"));
    let first = (0..40u64).map(|i| change(i, Some("first"))).collect();
    let second = (0..10u64).map(|i| change(i, Some("second"))).collect();
    rounds(&s, &cfg, &[first, second]).await;
    assert_eq!(total(&verified_clean(&cfg).await, |p| p.keys), 40);

    // Damaged bytes: the vector's checksum no longer matches.
    let t = s.table().await.unwrap();
    let with_dv = vectored_file(&t);
    let descriptor = with_dv.deletion_vector.clone().unwrap();
    let at = dv_path(&t, &descriptor);
    let store = t.log_store().object_store(None);
    let good = store.get(&at).await.unwrap().bytes().await.unwrap();
    let mut bad = good.to_vec();
    let last = bad.len() - 5;
    bad[last] ^= 0xff;
    store.put(&at, bad.into()).await.unwrap();
    let damaged = tributary::ops::verify::verify(&cfg, Duration::from_secs(30)).await;
    assert!(
        !damaged.as_ref().is_ok_and(|r| r.clean),
        "a damaged vector is not clean: {damaged:?}"
    );
    store.put(&at, good.into()).await.unwrap();
    verified_clean(&cfg).await;

    // A vector that hides the live row of event 15.
    let mut t = s.table().await.unwrap();
    hide_live_row(&mut t, 15).await;
    let report = verify_keys(&cfg).await;
    let text = tributary::ops::verify::render(&report);
    assert!(!report.clean, "{text}");
    let keys = report.upsert.as_ref().unwrap();
    assert_eq!(total(keys, |p| p.missing_keys), 1, "{text}");
    let missing: Vec<&String> = keys
        .partitions
        .iter()
        .flat_map(|p| &p.missing_sample)
        .collect();
    assert_eq!(missing, ["event_id=15"], "{text}");
}

/// A live data file that has a deletion vector.
fn vectored_file(t: &deltalake::DeltaTable) -> Add {
    #[allow(deprecated)]
    t.snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| f.add_action())
        .find(|a| a.deletion_vector.is_some())
        .expect("a window deleted rows by a vector")
}

/// The object-store path (from the table root) of a descriptor's DV file.
fn dv_path(
    t: &deltalake::DeltaTable,
    d: &deltalake::kernel::DeletionVectorDescriptor,
) -> deltalake::Path {
    let root = t.table_url().to_string();
    let root = root.trim_end_matches('/');
    let url = dv::location(t.table_url(), d).unwrap().unwrap().to_string();
    deltalake::Path::from(url.strip_prefix(root).unwrap().trim_start_matches('/'))
}

/// Commit a vector for the file holding event `id`'s live row: its current
/// vector and that row.
async fn hide_live_row(t: &mut deltalake::DeltaTable, id: i64) {
    let keys = RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(vec![Field::new(
            "event_id",
            DataType::Int64,
            false,
        )])),
        vec![std::sync::Arc::new(Int64Array::from(vec![id]))],
    )
    .unwrap();
    let index = dv::index::KeyIndex::default();
    let found = dv::positions::locate(t, &index, &keys, None).await.unwrap();
    assert_eq!(found.hits.len(), 1, "one live row of event {id}");
    let hit = found.hits[0];
    let file = &found.files[hit.file];
    let vector = dv::union(Some((*file.deleted).clone()), [hit.row]);
    #[allow(deprecated)]
    let add = t
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| f.add_action())
        .find(|a| a.path == file.path)
        .unwrap();
    let stats: serde_json::Value = serde_json::from_str(add.stats.as_deref().unwrap()).unwrap();
    let rows = stats["numRecords"].as_u64().unwrap();
    let written = dv::write_file("", uuid::Uuid::new_v4(), std::slice::from_ref(&vector)).unwrap();
    t.log_store()
        .object_store(None)
        .put(
            &deltalake::Path::from(written.path.as_str()),
            written.bytes.into(),
        )
        .await
        .unwrap();
    let (remove, new) =
        dv::replace(&add, written.descriptors[0].clone(), &vector, rows, 1).unwrap();
    CommitBuilder::default()
        .with_actions(vec![Action::Remove(remove), Action::Add(new)])
        .build(
            Some(t.snapshot().unwrap()),
            t.log_store(),
            DeltaOperation::Delete { predicate: None },
        )
        .await
        .unwrap();
}

/// The Python deltalake package appends between two windows: a duplicate
/// of a key the table holds and a row of a new key. The next window, which
/// changes both keys, finds the foreign file (the key index reads a file it
/// did not write) and leaves each key once, at its last change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_writer_appending_between_windows_is_seen_by_the_next() {
    let python = std::env::var("TRIBUTARY_TEST_PYTHON")
        .expect("TRIBUTARY_TEST_PYTHON is set by tests/run.sh (the readers' interpreter)");
    let s = Scenario::new("mor-foreign", 2).await;
    let cfg = upsert_config(&s, ON_READ);
    rounds(
        &s,
        &cfg,
        &[(0..20).map(|i| change(i, Some("first"))).collect()],
    )
    .await;

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/writers/foreign_append.py");
    let out = Command::new(&python)
        .arg(script)
        .args([s.table_uri().as_str(), "k5", "k500", "500"])
        .env("TRIBUTARY_TEST_S3_ENDPOINT", &s.servers.s3)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the foreign append: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let t = s.table().await.unwrap();
    let fives = query(&t, "SELECT count(*) FROM t WHERE event_id = 5").await;
    let fives = fives[0].column(0).as_any().downcast_ref::<Int64Array>();
    assert_eq!(fives.unwrap().value(0), 2, "the foreign duplicate landed");

    // The second window: k5 updated, k500 (only in the foreign file) updated.
    let mut second = vec![change(5, Some("after"))];
    second.push((0, "k500".into(), Some(event_of_kind(500, "after"))));
    let mut run = crate::ingest::start(cfg.clone());
    let records: Vec<(i32, &str, Option<&String>)> = second
        .iter()
        .map(|(p, k, v)| (*p, k.as_str(), v.as_ref()))
        .collect();
    let produced = produce_keyed(&s, &records).await;
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await;

    let mut want: BTreeMap<i64, String> = (0..20).map(|i| (i, "first".to_owned())).collect();
    want.insert(5, "after".into());
    want.insert(500, "after".into());
    assert_eq!(kinds(&s).await, want, "each key once, at its last change");
}

/// Compaction (`tributary compact`'s engine) rewriting the table's files
/// again and again while the daemon applies windows: a window planned on
/// files a compaction removed is planned again, and the table ends exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_racing_the_daemon_leaves_a_merge_on_read_table_exact() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let s = Scenario::new("mor-compact", 2).await;
    let cfg = upsert_config(&s, ON_READ);
    let done = Arc::new(AtomicBool::new(false));
    let compacted = Arc::new(AtomicU64::new(0));
    let compacting = {
        let (uri, storage) = (cfg.table.uri.clone(), cfg.storage.clone());
        let (done, compacted) = (done.clone(), compacted.clone());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
            while !done.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                let Ok(Some(t)) = tributary::sink::table::load(&uri, &storage).await else {
                    tokio::task::yield_now().await;
                    continue;
                };
                let c = tributary::ops::maintenance::Compact::new(t, None);
                let Ok(plan) = c.plan().await else { continue };
                if let Ok(r) = c.execute(plan).await
                    && r.files_removed > 0
                {
                    compacted.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let mut plan: Vec<Vec<(i32, String, Option<String>)>> = Vec::new();
    for n in 0..8u64 {
        let kind = format!("r{n}");
        plan.push((0..30).map(|i| change(i, Some(&kind))).collect());
        plan.push(vec![change(100 + n, Some(&kind)), change(n, None)]);
    }
    rounds(&s, &cfg, &plan).await;
    done.store(true, Ordering::SeqCst);
    compacting.await.unwrap();
    assert!(
        compacted.load(Ordering::SeqCst) > 0,
        "a compaction landed while the daemon ran"
    );
    let mut want: BTreeMap<i64, String> = (0..30).map(|i| (i, "r7".to_owned())).collect();
    want.remove(&7);
    for n in 0..8 {
        want.insert(100 + n, format!("r{n}"));
    }
    assert_eq!(kinds(&s).await, want);
    verified_clean(&cfg).await;
}

/// kill -9 at random points of one of three replicas on a merge-on-read
/// table: every key ends with its last change, none lost, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_three_daemons_on_a_merge_on_read_table_ends_exact() {
    kill_9_with_three_daemons("mor-kill", &format!("{ON_READ}\n")).await;
}
