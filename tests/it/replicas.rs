//! Scale-out of an upsert table: three daemons in one consumer group, the
//! table partitioned by the Kafka partition (which is part of the key, so of
//! every MERGE's join). Once the group has settled, the replicas' MERGEs run
//! side by side without one conflict, and the table ends exact.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::harness::*;

const PARTITIONS: i32 = 6;
const KEYS: u64 = 300;

/// The partitions a daemon's log says it holds now: assignments add to them,
/// revocations take away (eager and cooperative rebalances alike).
fn held(log: &str, topic: &str) -> BTreeSet<i32> {
    let mut held = BTreeSet::new();
    let marker = format!("{topic}/");
    for line in log.lines() {
        let adding = if line.contains("partitions assigned") {
            true
        } else if line.contains("partitions revoked") {
            false
        } else {
            continue;
        };
        let named = line.split(marker.as_str()).skip(1).filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<i32>().ok()
        });
        for p in named {
            if adding {
                held.insert(p);
            } else {
                held.remove(&p);
            }
        }
    }
    held
}

/// Round `r` of changes: every key `k{k}` in partition k % 6 with event_id
/// r * KEYS + k; in `deleting` rounds the keys with k % 10 == 3 get a tombstone.
fn round(r: u64, deleting: bool) -> Vec<(i32, String, Option<String>)> {
    (0..KEYS)
        .map(|k| {
            let value = (!deleting || k % 10 != 3).then(|| event(r * KEYS + k));
            ((k % PARTITIONS as u64) as i32, format!("k{k}"), value)
        })
        .collect()
}

async fn produce_round(
    s: &Scenario,
    changes: &[(i32, String, Option<String>)],
) -> BTreeMap<i32, Vec<i64>> {
    let records: Vec<(i32, &str, Option<&String>)> = changes
        .iter()
        .map(|(p, k, v)| (*p, k.as_str(), v.as_ref()))
        .collect();
    produce_keyed(s, &records).await
}

/// Three daemons, one upsert table partitioned by `_partition` and keyed by
/// (`_partition`, `_key`): one daemon inserts every key, then two more join;
/// when the three hold disjoint partitions covering the topic, three more
/// rounds (updates, then updates with deletes) are applied by all three at
/// once. Their MERGEs in that stretch: none conflicted. `verify` then finds
/// every key at its last change and the deleted ones gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_merge_into_one_upsert_table_without_conflicts() {
    let s = Scenario::new("upsert-3x", PARTITIONS).await;
    let flush = "[flush]\nmax_rows = 100\nmax_age = \"300ms\"";
    let cfg = crate::upsert::owned_upsert_config_file(&s, flush);
    // One daemon loads every key (its files hold rows of every partition where
    // the table is not partitioned), then two more join: scale-out from one.
    let mut daemons = vec![Daemon::start(&cfg, s.dir.path())];
    let mut produced = produce_round(&s, &round(0, false)).await;
    s.wait_caught_up(&produced, PARTITIONS, Duration::from_secs(180))
        .await;
    daemons.extend((0..2).map(|_| Daemon::start(&cfg, s.dir.path())));
    let marks: Vec<usize> = eventually(
        Duration::from_secs(120),
        "three daemons holding disjoint partitions that cover the topic",
        || {
            let held: Vec<BTreeSet<i32>> = daemons
                .iter()
                .map(|d| held(&d.log_text(), &s.topic))
                .collect();
            let all: BTreeSet<i32> = held.iter().flatten().copied().collect();
            let settled = held.iter().all(|h| !h.is_empty())
                && held.iter().map(BTreeSet::len).sum::<usize>() == PARTITIONS as usize
                && all.len() == PARTITIONS as usize;
            let marks: Vec<usize> = daemons.iter().map(|d| d.log_text().len()).collect();
            async move { settled.then_some(marks) }
        },
    )
    .await;

    for (r, deleting) in [(1, false), (2, false), (3, true)] {
        let more = produce_round(&s, &round(r, deleting)).await;
        for (p, o) in more {
            produced.entry(p).or_default().extend(o);
        }
    }
    s.wait_caught_up(&produced, PARTITIONS, Duration::from_secs(180))
        .await;
    let logs: Vec<String> = daemons
        .iter()
        .zip(&marks)
        .map(|(d, m)| d.log_text()[*m..].to_owned())
        .collect();
    for d in &mut daemons {
        d.stop_cleanly().await;
    }
    let merges: Vec<usize> = logs.iter().map(|l| l.matches("scan_ms").count()).collect();
    let conflicts: usize = logs
        .iter()
        .map(|l| l.matches("upsert conflicted").count())
        .sum();
    eprintln!("MERGEs per daemon after the group settled: {merges:?}; conflicts: {conflicts}");
    assert!(
        merges.iter().all(|m| *m > 0),
        "every replica merged: {merges:?}"
    );
    assert_eq!(
        conflicts,
        0,
        "replicas' MERGEs conflicted:\n{}",
        logs.join("\n---\n")
    );

    let cfg = parse_config(&std::fs::read_to_string(&cfg).unwrap());
    let report = tributary::ops::verify::verify(&cfg, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(report.clean, "{}", tributary::ops::verify::render(&report));
    let keys = report.upsert.expect("an upsert table's report");
    let live: u64 = keys.partitions.iter().map(|p| p.keys).sum();
    assert_eq!(live, KEYS - KEYS / 10, "the deleted keys are gone");
    let t = s.table().await.unwrap();
    let mut ids = Vec::new();
    for b in query(&t, "SELECT event_id FROM t ORDER BY event_id").await {
        use deltalake::arrow::array::AsArray;
        let col = b
            .column(0)
            .as_primitive::<deltalake::arrow::datatypes::Int64Type>();
        ids.extend(col.values().iter().copied());
    }
    let want: Vec<i64> = (0..KEYS)
        .filter(|k| k % 10 != 3)
        .map(|k| (3 * KEYS + k) as i64)
        .collect();
    assert_eq!(ids, want, "every live key at its last change");
}
