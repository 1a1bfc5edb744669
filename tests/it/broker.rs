//! What only a real broker makes possible (Apache Kafka, the suite's default):
//! a topic growing under the daemon, transactions and `isolation.level`, static
//! membership with a fenced twin, the cooperative-sticky assignor, the next
//! generation group protocol (KIP-848), and SASL/SCRAM over TLS with refused
//! credentials. Tansu does none of these.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::harness::*;
use crate::ingest::start;

/// The scenario's config with `properties` (TOML lines) added to
/// `[kafka.properties]`, windows of a second, and `extra`.
fn with_properties(s: &Scenario, properties: &str, extra: &str) -> tributary::config::Config {
    let text = s
        .config_toml(&format!("[flush]\nmax_age = \"1s\"\n{extra}"))
        .replace(
            "[kafka.properties]\n",
            &format!("[kafka.properties]\n{properties}\n"),
        );
    parse_config(&text)
}

fn merge(into: &mut BTreeMap<i32, Vec<i64>>, more: BTreeMap<i32, Vec<i64>>) {
    for (p, offsets) in more {
        into.entry(p).or_default().extend(offsets);
    }
}

/// The topic grows from 4 to 8 partitions while the daemon runs, and records
/// land on the new partitions before the daemon knows of them. Under
/// `earliest` they are read from their first offset, within the documented
/// discovery time (`topic.metadata.refresh.interval.ms`, 30 s, then the
/// rebalance), and every record is in the table exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_grown_from_4_to_8_partitions_mid_run_is_ingested_exactly_once() {
    let s = Scenario::new("grown-append", 4).await;
    let first = (0..400u64).map(|i| ((i % 4) as i32, event(i)));
    let mut produced = produce(&producer(&s.servers.brokers), &s.topic, first).await;
    let mut run = start(s.config("[flush]\nmax_age = \"1s\""));
    run.committed(&s.topic, &last_offsets(&produced)).await;

    grow_topic(&s, 8).await;
    let grown = Instant::now();
    // A producer started after the growth knows all eight partitions.
    let second = (400..1200u64).map(|i| ((i % 8) as i32, event(i)));
    merge(
        &mut produced,
        produce(&producer(&s.servers.brokers), &s.topic, second).await,
    );
    run.committed(&s.topic, &last_offsets(&produced)).await;
    eprintln!(
        "grown topic: the new partitions committed {:.1} s after the growth",
        grown.elapsed().as_secs_f64()
    );
    run.stop().await;
    let rows = s.rows().await;
    assert_eq!(diff(&rows, &produced), (0, 0));
    assert_eq!(rows.len(), 1200);
    for p in 4..8 {
        let first = rows.iter().filter(|(q, _)| *q == p).map(|(_, o)| *o).min();
        assert_eq!(first, Some(0), "partition {p} read from its first offset");
    }
}

/// A transactional producer on partition 0.
fn transactional(s: &Scenario) -> FutureProducer {
    let p: FutureProducer = kafka_client(&s.servers.brokers, None)
        .set("transactional.id", unique("tx"))
        .create()
        .unwrap();
    tokio::task::block_in_place(|| p.init_transactions(Duration::from_secs(30))).unwrap();
    p
}

/// Events `range` to partition 0 in one transaction, committed or aborted;
/// their offsets.
async fn transaction(
    p: &FutureProducer,
    s: &Scenario,
    range: std::ops::Range<u64>,
    commit: bool,
) -> Vec<i64> {
    p.begin_transaction().unwrap();
    let mut offsets = Vec::new();
    for i in range {
        let value = event(i);
        let record = FutureRecord::<str, str>::to(&s.topic)
            .partition(0)
            .payload(&value);
        let sent = p.send(record, Duration::from_secs(30)).await;
        offsets.push(sent.map_err(|(e, _)| e).unwrap().offset);
    }
    let timeout = Duration::from_secs(30);
    tokio::task::block_in_place(|| {
        if commit {
            p.commit_transaction(timeout)
        } else {
            p.abort_transaction(timeout)
        }
    })
    .unwrap();
    offsets
}

/// Three transactions on partition 0, the middle one aborted; the offsets of
/// the committed records and of all of them.
async fn committed_aborted_committed(s: &Scenario) -> (Vec<i64>, Vec<i64>) {
    let p = transactional(s);
    let mut committed = transaction(&p, s, 0..10, true).await;
    let aborted = transaction(&p, s, 10..20, false).await;
    committed.extend(transaction(&p, s, 20..30, true).await);
    let mut all = committed.clone();
    all.extend(aborted);
    all.sort_unstable();
    (committed, all)
}

fn partition_zero(offsets: &[i64]) -> BTreeMap<i32, Vec<i64>> {
    [(0, offsets.to_vec())].into()
}

/// Under the default `isolation.level` (read_committed) the aborted
/// transaction's records stay out of the table; `status` counts no lag for the
/// transaction markers after the last record, and `verify` finds the table
/// exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_transactions_stay_out_and_leave_no_lag() {
    let s = Scenario::new("txn-committed", 1).await;
    let (committed, _) = committed_aborted_committed(&s).await;
    let cfg = s.config("[flush]\nmax_age = \"1s\"");
    let mut run = start(cfg.clone());
    let expected = partition_zero(&committed);
    run.committed(&s.topic, &last_offsets(&expected)).await;
    run.stop().await;
    let rows = s.rows().await;
    assert_eq!(diff(&rows, &expected), (0, 0));
    assert_eq!(rows.len(), 20);

    let status = tributary::ops::status::status(&cfg, Duration::from_secs(20))
        .await
        .unwrap();
    let p = &status.partitions[0];
    assert_eq!(p.stored_offset, committed.last().copied());
    assert!(
        p.high_watermark > p.stored_offset.unwrap() + 1,
        "a commit marker follows the last record: {p:?}"
    );
    assert_eq!(status.total_lag, 0, "{p:?}");
    let report = tributary::ops::verify::verify(&cfg, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(report.clean, "{}", tributary::ops::verify::render(&report));
}

/// With `isolation.level = read_uncommitted` the daemon takes the aborted
/// transaction's records too, as that setting asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_uncommitted_takes_the_aborted_records_too() {
    let s = Scenario::new("txn-uncommitted", 1).await;
    let (_, all) = committed_aborted_committed(&s).await;
    let cfg = with_properties(&s, "\"isolation.level\" = \"read_uncommitted\"", "");
    let mut run = start(cfg);
    let expected = partition_zero(&all);
    run.committed(&s.topic, &last_offsets(&expected)).await;
    run.stop().await;
    let rows = s.rows().await;
    assert_eq!(diff(&rows, &expected), (0, 0));
    assert_eq!(rows.len(), 30);
}

/// Static membership: a second daemon joins with the same `group.instance.id`
/// (a pod started twice). The broker fences the first; librdkafka raises a
/// fatal error and that daemon stops with it, while its twin takes the
/// partitions and ingests every record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_static_member_stops_and_its_twin_takes_over() {
    let s = Scenario::new("static-member", 2).await;
    let cfg = with_properties(&s, "\"group.instance.id\" = \"ingest-0\"", "");
    let first = start(cfg.clone());
    first.holds(2, Duration::from_secs(60)).await;
    let twin = start(cfg);
    let err = first
        .ended_within(Duration::from_secs(60))
        .await
        .expect_err("the fenced member stops");
    let text = err.to_string();
    eprintln!("fenced static member stopped with: {text}");
    assert!(text.contains("fatal kafka error"), "{text}");

    let records = (0..200u64).map(|i| ((i % 2) as i32, event(i)));
    let produced = produce(&producer(&s.servers.brokers), &s.topic, records).await;
    let mut twin = twin;
    twin.committed(&s.topic, &last_offsets(&produced)).await;
    twin.stop().await;
    let rows = s.rows().await;
    assert_eq!(diff(&rows, &produced), (0, 0));
    assert_eq!(rows.len(), 200);
}

/// Three daemons join and one leaves while a producer runs, under `group`
/// (properties of a group protocol); every record ends in the table once.
/// Returns how long each join took to settle.
async fn join_and_leave(s: &Scenario, cfg: tributary::config::Config) -> Vec<Duration> {
    let background = BackgroundProducer::start(&s.servers.brokers, &s.topic, 6, 3000, 100);
    let a = start(cfg.clone());
    let mut joins = vec![a.holds(6, Duration::from_secs(60)).await];
    let b = start(cfg.clone());
    let settled = Instant::now();
    let _ = b.holds(3, Duration::from_secs(60)).await;
    a.holds(3, Duration::from_secs(60)).await;
    joins.push(settled.elapsed());
    let c = start(cfg);
    let settled = Instant::now();
    c.holds(2, Duration::from_secs(60)).await;
    joins.push(settled.elapsed());
    a.stop().await;
    let produced = background.finish().await;
    s.wait_caught_up(&produced, 6, Duration::from_secs(90))
        .await;
    b.stop().await;
    c.stop().await;
    let rows = s.rows().await;
    assert_eq!(diff(&rows, &produced), (0, 0));
    assert_eq!(rows.len(), 3000);
    joins
}

/// The cooperative-sticky assignor: rebalances move only the partitions that
/// change owner (incremental assign and revoke), with no record lost or
/// written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_sticky_rebalances_keep_every_record_exactly_once() {
    let s = Scenario::new("cooperative", 6).await;
    let group = "\"partition.assignment.strategy\" = \"cooperative-sticky\"";
    let joins = join_and_leave(&s, with_properties(&s, group, "")).await;
    eprintln!("cooperative-sticky: joins settled in {joins:?}");
}

/// The next generation consumer group protocol (KIP-848, `group.protocol =
/// consumer`; Kafka 4 and librdkafka 2.4+): the broker assigns, always
/// incrementally, and the table ends exact. The session timeout is the
/// broker's there: a config that still sets `session.timeout.ms` is refused
/// at start, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_group_protocol_of_kip_848_keeps_every_record_exactly_once() {
    let s = Scenario::new("kip848", 6).await;
    let protocol = "\"group.protocol\" = \"consumer\"";
    let refused = start(with_properties(&s, protocol, ""))
        .ended_within(Duration::from_secs(30))
        .await
        .expect_err("session.timeout.ms with group.protocol=consumer");
    let text = refused.to_string();
    assert!(
        text.contains("`session.timeout.ms` is not supported"),
        "{text}"
    );

    let text = s
        .config_toml("[flush]\nmax_age = \"1s\"")
        .replace("\"session.timeout.ms\" = \"6000\"\n", protocol)
        .replace("\"heartbeat.interval.ms\" = \"500\"\n", "\n");
    let joins = join_and_leave(&s, parse_config(&text)).await;
    eprintln!("group.protocol=consumer: joins settled in {joins:?}");
}

/// The scenario's config reaching Apache Kafka's SASL_SSL listener as the SCRAM
/// user `tributary` with `password`, trusting the test CA.
fn over_sasl_ssl(s: &Scenario, password: &str) -> tributary::config::Config {
    let var =
        |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set by tests/servers.sh"));
    let properties = format!(
        "\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-256\"\n\
         \"sasl.username\" = \"tributary\"\n\"sasl.password\" = \"{password}\"\n\
         \"ssl.ca.location\" = \"{}\"",
        var("TRIBUTARY_TEST_KAFKA_CA")
    );
    let text = s
        .config_toml("[flush]\nmax_age = \"1s\"")
        .replace(
            &format!("brokers = \"{}\"", s.servers.brokers),
            &format!("brokers = \"{}\"", var("TRIBUTARY_TEST_KAFKA_SASL_SSL")),
        )
        .replace(
            "[kafka.properties]\n",
            &format!("[kafka.properties]\n{properties}\n"),
        );
    parse_config(&text)
}

/// SCRAM-SHA-256 over TLS with a private CA, against the real broker (its user
/// made with `kafka-configs`' ConfigCommand): the daemon ingests every record
/// once, and `status` reaches the broker the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_over_tls_ingests_exactly_once() {
    let s = Scenario::new("sasl-ssl", 2).await;
    let records = (0..300u64).map(|i| ((i % 2) as i32, event(i)));
    let produced = produce(&producer(&s.servers.brokers), &s.topic, records).await;
    let cfg = over_sasl_ssl(&s, "tributary-secret");
    let mut run = start(cfg.clone());
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await;
    let rows = s.rows().await;
    assert_eq!(diff(&rows, &produced), (0, 0));
    assert_eq!(rows.len(), 300);
    let status = tributary::ops::status::status(&cfg, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(status.total_lag, 0);
}

/// Refused credentials are a permanent fault: the daemon stops, saying the
/// broker refused them, instead of retrying for ever without consuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_scram_credentials_stop_the_daemon_saying_so() {
    let s = Scenario::new("sasl-refused", 1).await;
    let err = start(over_sasl_ssl(&s, "not-the-password"))
        .ended_within(Duration::from_secs(60))
        .await
        .expect_err("refused credentials stop the daemon");
    let text = err.to_string();
    eprintln!("refused credentials: {text}");
    assert!(text.contains("Authentication failed"), "{text}");
    assert!(text.contains("sasl.username"), "says what to fix: {text}");
}
