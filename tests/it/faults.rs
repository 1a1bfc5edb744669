//! Fault suite: bad input, crashes, outages and races, each reporting what it did
//! (records, lost, duplicated, dead-lettered) on stderr.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};

use crate::harness::*;

/// How long a run may take to catch up after its fault.
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(180);
use crate::ingest::{dead_letters, start};

/// What a poison record is, and the `error_kind` it must be dead-lettered with.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Poison {
    Good,
    Garbage,
    Truncated,
    WrongType,
    Huge,
    Empty,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_input_goes_to_dead_letters_and_the_rest_is_exact() {
    let s = Scenario::new("poison", 4).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let n = 2000u64;
    let mut kinds = Vec::with_capacity(n as usize);
    let payloads: Vec<(i32, Vec<u8>)> = (0..n)
        .map(|i| {
            let roll: u32 = rng.random_range(0..100);
            let (kind, bytes) = match roll {
                0..10 => {
                    let len = rng.random_range(1..200);
                    let mut b: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    b[0] = b'#'; // never accidentally a JSON value
                    (Poison::Garbage, b)
                }
                10..13 => {
                    let e = event(i);
                    let cut = rng.random_range(1..e.len() - 1);
                    (Poison::Truncated, e.as_bytes()[..cut].to_vec())
                }
                13..16 => (
                    Poison::WrongType,
                    event(i)
                        .replacen(&format!("\"event_id\":{i}"), "\"event_id\":\"x\"", 1)
                        .into_bytes(),
                ),
                16..17 => (
                    Poison::Huge,
                    event(i)
                        .replacen("\"demo\"", &format!("\"{}\"", "z".repeat(300 * 1024)), 1)
                        .into_bytes(),
                ),
                17..18 => (Poison::Empty, Vec::new()),
                _ => (Poison::Good, event(i).into_bytes()),
            };
            kinds.push(kind);
            ((i % 4) as i32, bytes)
        })
        .collect();
    let produced = produce(&producer(&s.servers.brokers), &s.topic, payloads).await;
    // Which (partition, offset) each record got.
    let mut next: BTreeMap<i32, usize> = BTreeMap::new();
    let placed: Vec<(i32, i64, Poison)> = (0..n as usize)
        .map(|i| {
            let p = (i % 4) as i32;
            let k = next.entry(p).or_default();
            let o = produced[&p][*k];
            *k += 1;
            (p, o, kinds[i])
        })
        .collect();

    let dead_uri = format!("s3://{}/dead", s.bucket);
    let mut run = start(s.config(&format!(
        "[decode]\nmax_record_bytes = \"128 KiB\"\n[dead_letters]\nuri = \"{dead_uri}\"\n[flush]\nmax_rows = 400\nmax_age = \"1s\""
    )));
    run.committed(&s.topic, &last_offsets(&produced)).await;
    let summary = run.stop().await;

    let bad: Vec<&(i32, i64, Poison)> = placed.iter().filter(|p| p.2 != Poison::Good).collect();
    let mut good: Vec<(i32, i64)> = placed
        .iter()
        .filter(|p| p.2 == Poison::Good)
        .map(|p| (p.0, p.1))
        .collect();
    good.sort();
    let mut rows = s.rows().await;
    rows.sort();
    let distinct: std::collections::BTreeSet<_> = rows.iter().collect();
    assert_eq!(rows.len(), distinct.len(), "no duplicated rows");
    assert_eq!(rows, good, "exactly the good records, once");

    let dead = dead_letters(&s, &dead_uri).await;
    let mut expected_dead: Vec<(i32, i64, &str)> = bad
        .iter()
        .map(|(p, o, k)| {
            let kind = match k {
                Poison::Huge => "too_large",
                _ => "decode",
            };
            (*p, *o, kind)
        })
        .collect();
    expected_dead.sort();
    let got: Vec<(i32, i64, &str)> = dead.iter().map(|d| (d.0, d.1, d.3.as_str())).collect();
    assert_eq!(
        got, expected_dead,
        "every bad record dead-lettered once, with its kind"
    );
    assert!(
        dead.iter().all(|d| !d.4.is_empty()),
        "every dead letter has a reason"
    );
    assert_eq!(summary.rejected as usize, bad.len());
    let count = |k: Poison| placed.iter().filter(|p| p.2 == k).count();
    eprintln!(
        "poison: {n} records: {} good rows (0 lost, 0 duplicated), {} dead letters: \
         garbage {}, truncated {}, wrong type {}, huge {}, empty {}",
        rows.len(),
        dead.len(),
        count(Poison::Garbage),
        count(Poison::Truncated),
        count(Poison::WrongType),
        count(Poison::Huge),
        count(Poison::Empty),
    );
}

/// kill -9 loop: three daemons share the group and the table; at random moments
/// one of them is killed with SIGKILL and started again, `iterations` times, while a
/// producer writes `total` records. Then every (partition, offset) is read back.
async fn kill_loop(name: &str, iterations: usize, total: u64) {
    let started = std::time::Instant::now();
    let s = Scenario::new(name, 6).await;
    let cfg = s.write_config("[flush]\nmax_rows = 300\nmax_age = \"500ms\"");
    // Small batches (10 records every ~60 ms) keep the producer running through
    // all the kills (each ~3 s apart), not only the first few.
    let producer = BackgroundProducer::start(&s.servers.brokers, &s.topic, 6, total, 10);
    let mut daemons: Vec<Daemon> = (0..3).map(|_| Daemon::start(&cfg, s.dir.path())).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(iterations as u64);
    let mut rows_at_kills = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        // Long enough for the group to settle and commit between some kills (a
        // rebalance takes a few seconds), short enough to hit commits in flight.
        let wait = rng.random_range(1500..5000);
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        let victim = rng.random_range(0..daemons.len());
        daemons[victim].kill9();
        rows_at_kills.push(s.rows().await.len());
        daemons[victim] = Daemon::start(&cfg, s.dir.path());
    }
    let produced = producer.finish().await;
    let produced_total: usize = produced.values().map(Vec::len).sum();
    s.wait_caught_up(&produced, 6, CATCH_UP).await;
    for d in &mut daemons {
        d.stop_cleanly().await;
    }
    let rows = s.rows().await;
    let (lost, duplicated) = diff(&rows, &produced);
    eprintln!(
        "kill -9 loop: {iterations} kills over 3 daemons, {produced_total} records produced, \
         {} rows, lost {lost}, duplicated {duplicated}, rows at each kill {rows_at_kills:?}, \
         wall {:.0}s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    let mid_stream = rows_at_kills
        .windows(2)
        .filter(|w| w[1] > w[0] && w[1] < produced_total)
        .count();
    assert!(
        mid_stream >= iterations / 4,
        "the table must move between kills, which land mid-stream: {rows_at_kills:?}"
    );
    assert_eq!((rows.len(), lost, duplicated), (produced_total, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loop_with_three_daemons_is_exactly_once() {
    kill_loop("kill-loop", 20, 12_000).await;
}

/// The long version: `tests/run.sh faults::kill_9_loop_long --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 100 kills"]
async fn kill_9_loop_long() {
    kill_loop("kill-loop-long", 100, 60_000).await;
}

/// The S3 server is gone for 30 s mid-stream: the daemon retries with backoff and
/// stays up (healthy, not ready), its memory stays bounded (the poll thread
/// pauses), and once S3 is back it catches up with nothing lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_of_30s_mid_stream_loses_nothing_and_the_daemon_stays_up() {
    let started = std::time::Instant::now();
    let s = Scenario::new("s3-outage", 4).await;
    let s3 = s.storage_proxy().await;
    let port = free_port();
    let text = s
        .config_toml_via(&s3, &format!(
            "[flush]\nmax_rows = 300\nmax_age = \"500ms\"\n[commit]\nmax_backoff = \"4s\"\n[observability]\nlisten = \"127.0.0.1:{port}\"\n"
        ));
    let cfg = s.dir.path().join("outage.toml");
    std::fs::write(&cfg, text).unwrap();
    let producer = BackgroundProducer::start(&s.servers.brokers, &s.topic, 4, 8000, 20);
    let mut daemon = Daemon::start(&cfg, s.dir.path());
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let rows_before = s.rows_after_first_commits().await;
    s3.take_down();
    let (mut healthy, mut not_ready, mut samples, mut max_rss) = (0, 0, 0, 0u64);
    let outage = std::time::Instant::now();
    while outage.elapsed() < std::time::Duration::from_secs(30) {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "the daemon exited during the outage; log:\n{}",
            daemon.log_text()
        );
        samples += 1;
        healthy += usize::from(http_get(metrics, "/healthz").0 == 200);
        not_ready += usize::from(http_get(metrics, "/readyz").0 == 503);
        max_rss = max_rss.max(rss_bytes(daemon.child.id()));
    }
    s3.bring_up();
    let produced = producer.finish().await;
    s.wait_caught_up(&produced, 4, CATCH_UP).await;
    daemon.stop_cleanly().await;
    let rows = s.rows().await;
    let (lost, duplicated) = diff(&rows, &produced);
    let total: usize = produced.values().map(Vec::len).sum();
    eprintln!(
        "S3 outage: 30 s with {rows_before} rows committed before it; {total} records \
         produced, {} rows, lost {lost}, duplicated {duplicated}; healthy {healthy}/{samples} \
         samples, not ready {not_ready}/{samples}, peak RSS during the outage {} MiB; \
         wall {:.0}s",
        rows.len(),
        max_rss >> 20,
        started.elapsed().as_secs_f64()
    );
    assert_eq!((rows.len(), lost, duplicated), (total, 0, 0));
    assert_eq!(healthy, samples, "healthy throughout");
    assert!(
        not_ready >= samples / 2,
        "not ready during the outage ({not_ready}/{samples})"
    );
    assert!(max_rss < 512 << 20, "memory bounded: {} MiB", max_rss >> 20);
    assert!(
        daemon.log_text().contains("rewind") || daemon.log_text().contains("retrying"),
        "the daemon retried"
    );
}

/// The broker is killed mid-stream and comes back 10 s later: the daemon and the
/// producer reconnect, and the table ends with every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    init_logs();
    let started = std::time::Instant::now();
    let shared = servers();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = OwnBroker::start(&shared.s3, dir.path(), None).await;
    let s = Scenario {
        servers: Servers {
            brokers: broker.brokers(),
            tansu: shared.tansu.clone(),
            s3: shared.s3.clone(),
        },
        topic: unique("broker-restart"),
        bucket: unique("b").to_lowercase(),
        app_id: unique("app"),
        dir,
    };
    create_topic(&s.servers.brokers, &s.topic, 4).await;
    create_bucket(&s.servers.s3, &s.bucket);
    let cfg = s.write_config("[flush]\nmax_rows = 300\nmax_age = \"500ms\"");
    let producer = BackgroundProducer::start(&s.servers.brokers, &s.topic, 4, 4000, 20);
    let mut daemon = Daemon::start(&cfg, s.dir.path());
    let rows_before = s.rows_after_first_commits().await;
    broker.kill9();
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon exited while the broker was down; log:\n{}",
        daemon.log_text()
    );
    broker.restart().await;
    let acked = producer.finish().await;
    s.wait_caught_up(&acked, 4, CATCH_UP).await;
    daemon.stop_cleanly().await;
    // The producer has no idempotence here: a batch in flight when the broker died
    // can be stored twice, at new offsets. Those are records like any other.
    let produced = topic_offsets(&s.servers.brokers, &s.topic, &last_offsets(&acked)).await;
    let rows = s.rows().await;
    let (lost, duplicated) = diff(&rows, &produced);
    let total: usize = produced.values().map(Vec::len).sum();
    let acked_total: usize = acked.values().map(Vec::len).sum();
    eprintln!(
        "broker restart: killed with {rows_before} rows committed, down 10 s; {acked_total} \
         records acknowledged, {total} in the topic, {} rows, lost {lost}, duplicated \
         {duplicated}; wall {:.0}s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!((rows.len(), lost, duplicated), (total, 0, 0));
}

/// Commit races: two daemons share the app id and the table but sit in different
/// consumer groups, so each is assigned every partition and both write the same
/// offsets, as zombies or a manual reassignment would. The compare-and-swap on the
/// stored offsets must let exactly one of them land each range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_racing_for_the_same_partitions_never_both_land() {
    let started = std::time::Instant::now();
    let s = Scenario::new("race", 4).await;
    let base = s.config_toml("[flush]\nmax_rows = 200\nmax_age = \"300ms\"");
    let configs: Vec<std::path::PathBuf> = ["a", "b"]
        .iter()
        .map(|g| {
            let path = s.dir.path().join(format!("race-{g}.toml"));
            let text = base.replace(
                "auto_offset_reset = \"earliest\"",
                &format!(
                    "auto_offset_reset = \"earliest\"\ngroup_id = \"{}-{g}\"",
                    s.app_id
                ),
            );
            assert_ne!(text, base, "the group id must be set");
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let producer = BackgroundProducer::start(&s.servers.brokers, &s.topic, 4, 6000, 60);
    let mut daemons: Vec<Daemon> = configs
        .iter()
        .map(|c| Daemon::start(c, s.dir.path()))
        .collect();
    let produced = producer.finish().await;
    s.wait_caught_up(&produced, 4, CATCH_UP).await;
    for d in &mut daemons {
        d.stop_cleanly().await;
    }
    let rows = s.rows().await;
    let (lost, duplicated) = diff(&rows, &produced);
    let total: usize = produced.values().map(Vec::len).sum();
    let lost_races: usize = daemons
        .iter()
        .map(|d| {
            d.log_text()
                .matches("another writer committed these partitions first")
                .count()
        })
        .sum();
    let commits = s.version().await.unwrap_or(0);
    eprintln!(
        "commit races: 2 workers on every partition, {total} records produced, {} rows, \
         lost {lost}, duplicated {duplicated}; {commits} table versions, {lost_races} \
         windows dropped after losing a race; wall {:.0}s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        lost_races > 0,
        "the two workers must actually have raced for the same offsets"
    );
    assert_eq!((rows.len(), lost, duplicated), (total, 0, 0));
}
