//! The pipeline in-process: exactly once with txn versions, the age flush, bad
//! records.

use std::sync::Arc;
use std::time::Duration;

use deltalake::arrow::array::AsArray;
use deltalake::arrow::datatypes::{DataType, TimeUnit};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tributary::config::Config;
use tributary::pipeline::{self, PipelineError, RunOptions, RunSummary};
use tributary::record::TopicPartition;
use tributary::telemetry::stats::PipelineStats;

use crate::harness::*;

pub struct Running {
    pub stats: Arc<PipelineStats>,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<RunSummary, PipelineError>>,
}

pub fn start(cfg: Config) -> Running {
    let stats = Arc::new(PipelineStats::default());
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(pipeline::run(
        cfg,
        stats.clone(),
        RunOptions::default(),
        async {
            let _ = rx.await;
        },
    ));
    Running {
        stats,
        stop: Some(tx),
        handle,
    }
}

impl Running {
    /// The pipeline's result, once it ends by itself (panics after `deadline`).
    pub async fn ended_within(self, deadline: Duration) -> Result<RunSummary, PipelineError> {
        match tokio::time::timeout(deadline, self.handle).await {
            Ok(done) => done.unwrap(),
            Err(_) => panic!("the pipeline still runs after {deadline:?}"),
        }
    }

    pub async fn stop(mut self) -> RunSummary {
        let _ = self.stop.take().unwrap().send(());
        self.handle.await.unwrap().expect("pipeline ends cleanly")
    }

    /// Wait until the pipeline holds `n` partitions; how long it took.
    pub async fn holds(&self, n: u64, deadline: Duration) -> Duration {
        let started = std::time::Instant::now();
        let stats = self.stats.clone();
        eventually(deadline, "partitions assigned", || {
            let held = stats
                .assigned_partitions
                .load(std::sync::atomic::Ordering::Relaxed);
            async move { (held == n).then_some(()) }
        })
        .await;
        started.elapsed()
    }

    /// Wait until the pipeline has committed `expected` (partition -> last offset);
    /// fails at once, with the pipeline's error, if it stops first.
    pub async fn committed(
        &mut self,
        topic: &str,
        expected: &std::collections::BTreeMap<i32, Option<i64>>,
    ) {
        let stats = self.stats.clone();
        let topic = topic.to_owned();
        let handle = &self.handle;
        let stopped = eventually(
            Duration::from_secs(90),
            "pipeline to commit the last offsets",
            || {
                let c = stats.committed_offsets();
                let done = expected.iter().all(|(p, last)| {
                    c.get(&TopicPartition::new(topic.as_str(), *p)).copied() == *last
                });
                let stopped = handle.is_finished();
                async move { (done || stopped).then_some(!done) }
            },
        )
        .await;
        if stopped {
            let result = (&mut self.handle).await;
            panic!("the pipeline stopped before committing: {result:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_land_exactly_once_with_txn_versions() {
    let s = Scenario::new("exactly-once", 4).await;
    let producer = producer(&s.servers.brokers);
    let produced = produce(
        &producer,
        &s.topic,
        (0..2000u64).map(|i| ((i % 4) as i32, event(i))),
    )
    .await;
    // Small windows force several commits.
    let mut run = start(s.config("[flush]\nmax_rows = 300\nmax_age = \"1s\""));
    let last = last_offsets(&produced);
    run.committed(&s.topic, &last).await;
    let summary = run.stop().await;

    assert_eq!(summary.rejected, 0);
    let rows = s.rows().await;
    let (lost, duplicated) = diff(&rows, &produced);
    assert_eq!((rows.len(), lost, duplicated), (2000, 0, 0));
    assert_eq!(
        s.stored_offsets(4).await,
        last,
        "txn versions are the last offsets"
    );
    let t = s.table().await.unwrap();
    assert!(
        t.version().unwrap() >= 3,
        "several commits, got version {:?}",
        t.version()
    );
    // New tables stay at reader 1 / writer 2, with UTC timestamps.
    let snapshot = t.snapshot().unwrap();
    assert_eq!(snapshot.protocol().min_reader_version(), 1);
    assert_eq!(snapshot.protocol().min_writer_version(), 2);
    let batches = query(&t, "SELECT ts, _timestamp, _key, _topic FROM t LIMIT 1").await;
    let utc = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    assert_eq!(batches[0].schema().field(0).data_type(), &utc);
    assert_eq!(batches[0].schema().field(1).data_type(), &utc);
    assert_eq!(batches[0].num_rows(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn age_flush_fires_without_new_records() {
    let s = Scenario::new("age-flush", 2).await;
    let run =
        start(s.config("[flush]\nmax_rows = 1000000\nmax_bytes = \"1 GiB\"\nmax_age = \"1s\""));
    // Let the consumer join before producing, so nothing after these 10 records
    // arrives to trigger a flush.
    eventually(Duration::from_secs(60), "partition assignment", || {
        let ready = run.stats.ready.load(std::sync::atomic::Ordering::Relaxed);
        async move { ready.then_some(()) }
    })
    .await;
    let producer = producer(&s.servers.brokers);
    let produced = produce(
        &producer,
        &s.topic,
        (0..10u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;
    // The table, read while the daemon still runs, shows the rows.
    let rows = eventually(
        Duration::from_secs(60),
        "age flush to commit 10 rows",
        || async {
            let rows = s.rows().await;
            (rows.len() == 10).then_some(rows)
        },
    )
    .await;
    assert_eq!(diff(&rows, &produced), (0, 0));
    assert_eq!(PipelineStats::get(&run.stats.commits), 1);
    let summary = run.stop().await;
    assert_eq!(summary.commits, 1, "shutdown had nothing left to commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_counted_skipped_and_their_offsets_accounted() {
    let s = Scenario::new("bad-json", 1).await;
    let producer = producer(&s.servers.brokers);
    let payloads = vec![
        event(0),
        "{\"event_id\": ".to_owned(), // truncated
        event(2),
        "{\"event_id\": \"not a number\"}".to_owned(), // wrong type
        "not json at all".to_owned(),                  // garbage, and the partition's tail
    ];
    let produced = produce(&producer, &s.topic, payloads.into_iter().map(|p| (0, p))).await;
    let last = last_offsets(&produced);
    let mut run = start(s.config("[flush]\nmax_age = \"1s\""));
    run.committed(&s.topic, &last).await;
    let summary = run.stop().await;
    assert_eq!((summary.records, summary.rejected, summary.rows), (5, 3, 2));
    let rows = s.rows().await;
    let offs = &produced[&0];
    assert_eq!(rows, vec![(0, offs[0]), (0, offs[2])]);
    // The stored offset covers the rejected tail: a restart does not re-read it.
    assert_eq!(s.stored_offsets(1).await, last);

    let more = produce(&producer, &s.topic, [(0, event(5))]).await;
    let mut run = start(s.config("[flush]\nmax_age = \"1s\""));
    run.committed(&s.topic, &last_offsets(&more)).await;
    let summary = run.stop().await;
    assert_eq!((summary.records, summary.rejected, summary.rows), (1, 0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_create_one_table() {
    let s = Scenario::new("create-race", 1).await;
    let cfg = s.config("");
    let opens = (0..4).map(|_| {
        let cfg = cfg.clone();
        tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(60),
                tributary::sink::table::open_or_create(&cfg.table, &cfg.storage, None),
            )
            .await
        })
    });
    let mut created = 0;
    for o in futures::future::join_all(opens).await {
        let opened = o
            .unwrap()
            .expect("open_or_create finished")
            .expect("table open");
        created += usize::from(opened.created);
    }
    assert_eq!(created, 1, "exactly one start created the table");
    assert_eq!(s.table().await.unwrap().version(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_commits_what_is_buffered() {
    let s = Scenario::new("shutdown", 2).await;
    let producer = producer(&s.servers.brokers);
    let produced = produce(
        &producer,
        &s.topic,
        (0..50u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;
    // No limit is reached: the records sit in the open window.
    let run = start(s.config("[flush]\nmax_rows = 1000000\nmax_age = \"1h\""));
    let stats = run.stats.clone();
    eventually(Duration::from_secs(60), "50 records buffered", || {
        let n = PipelineStats::get(&stats.records_accounted);
        async move { (n == 50).then_some(()) }
    })
    .await;
    assert_eq!(PipelineStats::get(&run.stats.commits), 0);
    assert!(
        s.rows().await.is_empty(),
        "nothing committed before shutdown"
    );
    let summary = run.stop().await;
    assert_eq!((summary.commits, summary.rows), (1, 50));
    let rows = s.rows().await;
    assert_eq!(diff(&rows, &produced), (0, 0));
    assert_eq!(rows.len(), 50);
    assert_eq!(s.stored_offsets(2).await, last_offsets(&produced));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_pattern_reads_every_matching_topic_into_one_table() {
    let s = Scenario::new("pattern", 1).await;
    // A second topic sharing the scenario's prefix, and one that does not match.
    let second = format!("{}-second", s.topic);
    let other = unique("unrelated");
    create_topic(&s.servers.brokers, &second, 2).await;
    create_topic(&s.servers.brokers, &other, 1).await;
    let producer = producer(&s.servers.brokers);
    let a = produce(&producer, &s.topic, (0..30u64).map(|i| (0, event(i)))).await;
    let b = produce(
        &producer,
        &second,
        (0..40u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;
    produce(&producer, &other, (0..5u64).map(|i| (0, event(i)))).await;

    let toml = s.config_toml("[flush]\nmax_age = \"1s\"").replace(
        &format!("topics = [\"{}\"]", s.topic),
        &format!("topic_pattern = \"^{}.*\"", s.topic),
    );
    let cfg = parse_config(&toml);
    let run = start(cfg);
    let stats = run.stats.clone();
    eventually(Duration::from_secs(90), "both topics committed", || {
        let n = stats.committed_offsets().len();
        let rows = PipelineStats::get(&stats.rows_committed);
        async move { (n == 3 && rows == 70).then_some(()) }
    })
    .await;
    run.stop().await;

    let t = s.table().await.unwrap();
    let batches = query(
        &t,
        "SELECT _topic, count(*) AS n FROM t GROUP BY _topic ORDER BY _topic",
    )
    .await;
    use deltalake::arrow::array::AsArray;
    use deltalake::arrow::datatypes::Int64Type;
    assert_eq!(batches.len(), 1);
    let b0 = &batches[0];
    let topics: Vec<String> = (0..b0.num_rows())
        .map(|i| deltalake::arrow::util::display::array_value_to_string(b0.column(0), i).unwrap())
        .collect();
    assert_eq!(topics, vec![s.topic.clone(), second.clone()]);
    assert_eq!(
        b0.column(1).as_primitive::<Int64Type>().values().to_vec(),
        vec![30, 40]
    );
    // Offsets are stored per topic: the app id names the topic.
    for (topic, produced) in [(&s.topic, &a), (&second, &b)] {
        for (p, last) in last_offsets(produced) {
            let tp = TopicPartition::new(topic.as_str(), p);
            assert_eq!(
                tributary::sink::table::stored_offset(&t, &s.app_id, &tp)
                    .await
                    .unwrap(),
                last
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_columns_and_filters_are_sql_on_each_batch() {
    let s = Scenario::new("transform", 1).await;
    let producer = producer(&s.servers.brokers);
    let mut events: Vec<(i32, String)> = (0..400u64).map(|i| (0, event(i))).collect();
    // Event 50 gets a user id the derived `user_no` cannot parse.
    events[50].1 = events[50].1.replace("\"user-50\"", "\"user-x\"");
    let produced = produce(&producer, &s.topic, events).await;
    let text = s
        .config_toml(
            "[table.derived_columns]\nday = \"CAST(ts AS DATE)\"\nuser_no = \"CAST(SUBSTR(user_id, 6) AS INT)\"\n[flush]\nmax_age = \"1s\"",
        )
        .replace(
            "compression = \"zstd(1)\"\n",
            "compression = \"zstd(1)\"\nfilter = \"kind <> 'view'\"\npartition_by = [\"day\"]\n",
        );
    let cfg = parse_config(&text);
    let mut run = start(cfg);
    run.committed(&s.topic, &last_offsets(&produced)).await;
    let summary = run.stop().await;
    assert_eq!(summary.rejected, 1, "the unparseable user id");

    let t = s.table().await.unwrap();
    let snapshot = t.snapshot().unwrap();
    assert_eq!(snapshot.metadata().partition_columns(), &["day".to_owned()]);
    let b = query(
        &t,
        "SELECT _offset, kind, CAST(day AS VARCHAR) AS day, user_no FROM t ORDER BY _offset",
    )
    .await;
    let b = deltalake::arrow::compute::concat_batches(&b[0].schema(), &b).unwrap();
    let offsets: Vec<i64> = b
        .column(0)
        .as_primitive::<deltalake::arrow::datatypes::Int64Type>()
        .values()
        .to_vec();
    // Kept: not a view (i % 4 != 0), and not the bad record.
    let expected: Vec<i64> = (0..400).filter(|i| i % 4 != 0 && *i != 50).collect();
    assert_eq!(offsets, expected);
    let day = deltalake::arrow::compute::cast(b.column(2), &DataType::Utf8).unwrap();
    assert!(
        day.as_string::<i32>()
            .iter()
            .all(|d| d == Some("2025-01-01"))
    );
    let user_no = b
        .column(3)
        .as_primitive::<deltalake::arrow::datatypes::Int32Type>();
    for (r, &o) in offsets.iter().enumerate() {
        assert_eq!(i64::from(user_no.value(r)), o % 997);
    }
    assert_eq!(s.stored_offsets(1).await[&0], Some(399));
}

/// Rows of the table at `uri` as (topic, partition, offset).
async fn topic_rows(s: &Scenario, uri: &str) -> Vec<(String, i32, i64)> {
    let cfg = s.config("");
    let url = tributary::config::parse_table_uri(uri).unwrap();
    let t = tributary::sink::table::load(&url, &cfg.storage)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no table at {uri}"));
    let batches = query(
        &t,
        "SELECT CAST(_topic AS VARCHAR), _partition, _offset FROM t ORDER BY 1, 2, 3",
    )
    .await;
    let mut out = Vec::new();
    for b in batches {
        let topics = deltalake::arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
        let topics = topics.as_string::<i32>();
        let parts = b
            .column(1)
            .as_primitive::<deltalake::arrow::datatypes::Int32Type>();
        let offsets = b
            .column(2)
            .as_primitive::<deltalake::arrow::datatypes::Int64Type>();
        for r in 0..b.num_rows() {
            out.push((topics.value(r).to_owned(), parts.value(r), offsets.value(r)));
        }
    }
    out
}

fn expected_rows(
    topic: &str,
    produced: &std::collections::BTreeMap<i32, Vec<i64>>,
    keep: impl Fn(i64) -> bool,
) -> Vec<(String, i32, i64)> {
    let mut v: Vec<(String, i32, i64)> = produced
        .iter()
        .flat_map(|(p, offs)| offs.iter().map(move |o| (*p, *o)))
        .filter(|(_, o)| keep(*o))
        .map(|(p, o)| (topic.to_owned(), p, o))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_send_two_topics_to_two_tables_exactly_once_each() {
    let s = Scenario::new("route-a", 2).await;
    let topic_b = unique("route-b");
    create_topic(&s.servers.brokers, &topic_b, 2).await;
    let producer = producer(&s.servers.brokers);
    let a = produce(
        &producer,
        &s.topic,
        (0..300u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;
    // Topic b: per partition the events i, i+2, ..: offset o holds event 2o + p.
    let b = produce(
        &producer,
        &topic_b,
        (0..200u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;
    let uri_b = format!("s3://{}/orders_b", s.bucket);
    let text = s
        .config_toml(&format!(
            "[flush]\nmax_rows = 120\nmax_age = \"1s\"\n\n[[routes]]\ntopics = [\"{topic_b}\"]\nuri = \"{uri_b}\"\nschema_file = \"{schema}\"\nfilter = \"kind <> 'view'\"\n[routes.flush]\nmax_rows = 40\n",
            schema = demo_schema_path().display()
        ))
        ;
    let cfg = parse_config(&s.also_subscribe(&text, &topic_b));
    let mut run = start(cfg);
    run.committed(&s.topic, &last_offsets(&a)).await;
    run.committed(&topic_b, &last_offsets(&b)).await;
    run.stop().await;

    let rows_a = topic_rows(&s, &s.table_uri()).await;
    assert_eq!(
        rows_a,
        expected_rows(&s.topic, &a, |_| true),
        "table a: topic a exactly once"
    );
    let rows_b = topic_rows(&s, &uri_b).await;
    // Views (event i % 4 == 0) filtered out: event = 2 * offset + partition.
    let b_kept = |p: i32| move |o: i64| (2 * o + i64::from(p)) % 4 != 0;
    let mut expected_b: Vec<(String, i32, i64)> = [0, 1]
        .iter()
        .flat_map(|&p| {
            let one: std::collections::BTreeMap<i32, Vec<i64>> =
                [(p, b[&p].clone())].into_iter().collect();
            expected_rows(&topic_b, &one, b_kept(p))
        })
        .collect();
    expected_b.sort();
    assert_eq!(rows_b.len(), 150);
    assert_eq!(
        rows_b, expected_b,
        "table b: topic b minus views, exactly once"
    );

    // Each table stores the offsets of its own topic only.
    let cfg = s.config("");
    let tb = tributary::sink::table::load(
        &tributary::config::parse_table_uri(&uri_b).unwrap(),
        &cfg.storage,
    )
    .await
    .unwrap()
    .unwrap();
    let ta = s.table().await.unwrap();
    for p in 0..2 {
        let in_b = tributary::sink::table::stored_offset(
            &tb,
            &s.app_id,
            &TopicPartition::new(topic_b.as_str(), p),
        )
        .await
        .unwrap();
        assert_eq!(in_b, b[&p].last().copied());
        let a_in_b = tributary::sink::table::stored_offset(
            &tb,
            &s.app_id,
            &TopicPartition::new(s.topic.as_str(), p),
        )
        .await
        .unwrap();
        assert_eq!(a_in_b, None);
        let b_in_a = tributary::sink::table::stored_offset(
            &ta,
            &s.app_id,
            &TopicPartition::new(topic_b.as_str(), p),
        )
        .await
        .unwrap();
        assert_eq!(b_in_a, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uri_template_makes_one_table_per_topic() {
    let s = Scenario::new("tmpl-a", 1).await;
    let topic_b = unique("tmpl-b");
    create_topic(&s.servers.brokers, &topic_b, 1).await;
    let producer = producer(&s.servers.brokers);
    let a = produce(&producer, &s.topic, (0..100u64).map(|i| (0, event(i)))).await;
    let b = produce(&producer, &topic_b, (0..60u64).map(|i| (0, event(i)))).await;
    let text = s
        .config_toml("[flush]\nmax_age = \"1s\"\n")
        .replace(&s.table_uri(), &format!("s3://{}/t/{{topic}}", s.bucket));
    let cfg = parse_config(&s.also_subscribe(&text, &topic_b));
    let mut run = start(cfg);
    run.committed(&s.topic, &last_offsets(&a)).await;
    run.committed(&topic_b, &last_offsets(&b)).await;
    run.stop().await;
    let rows_a = topic_rows(&s, &format!("s3://{}/t/{}", s.bucket, s.topic)).await;
    assert_eq!(rows_a, expected_rows(&s.topic, &a, |_| true));
    let rows_b = topic_rows(&s, &format!("s3://{}/t/{topic_b}", s.bucket)).await;
    assert_eq!(rows_b, expected_rows(&topic_b, &b, |_| true));
}

/// (partition, offset, value, error_kind, error) of every dead letter at `uri`.
pub async fn dead_letters(s: &Scenario, uri: &str) -> Vec<(i32, i64, Vec<u8>, String, String)> {
    let cfg = s.config("");
    let url = tributary::config::parse_table_uri(uri).unwrap();
    let Some(t) = tributary::sink::table::load(&url, &cfg.storage)
        .await
        .unwrap()
    else {
        return Vec::new();
    };
    let batches = query(
        &t,
        "SELECT partition, \"offset\", value, error_kind, error FROM t ORDER BY 1, 2",
    )
    .await;
    let mut out = Vec::new();
    for b in batches {
        let text =
            |c: usize| deltalake::arrow::compute::cast(b.column(c), &DataType::Utf8).unwrap();
        let values = deltalake::arrow::compute::cast(b.column(2), &DataType::Binary).unwrap();
        let (kinds, errors) = (text(3), text(4));
        for r in 0..b.num_rows() {
            out.push((
                b.column(0)
                    .as_primitive::<deltalake::arrow::datatypes::Int32Type>()
                    .value(r),
                b.column(1)
                    .as_primitive::<deltalake::arrow::datatypes::Int64Type>()
                    .value(r),
                values.as_binary::<i32>().value(r).to_vec(),
                kinds.as_string::<i32>().value(r).to_owned(),
                errors.as_string::<i32>().value(r).to_owned(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_records_land_in_the_dead_letter_table_once_even_after_a_replay() {
    let s = Scenario::new("dlq", 2).await;
    let payload = |i: u64| match i % 10 {
        3 => format!("garbage {i}"),
        7 => event(i)[..20].to_owned(),
        _ => event(i),
    };
    let produced = produce(
        &producer(&s.servers.brokers),
        &s.topic,
        (0..200u64).map(|i| ((i % 2) as i32, payload(i))),
    )
    .await;
    let dead_uri = format!("s3://{}/dead_letters", s.bucket);
    let extra =
        format!("[dead_letters]\nuri = \"{dead_uri}\"\n[flush]\nmax_rows = 50\nmax_age = \"1s\"");
    let mut run = start(s.config(&extra));
    run.committed(&s.topic, &last_offsets(&produced)).await;
    assert_eq!(run.stop().await.rejected, 40);
    // Event i went to partition i % 2 at offset i / 2.
    let expected: Vec<(i32, i64, Vec<u8>)> = {
        let mut v: Vec<(i32, i64, Vec<u8>)> = (0..200u64)
            .filter(|i| matches!(i % 10, 3 | 7))
            .map(|i| ((i % 2) as i32, (i / 2) as i64, payload(i).into_bytes()))
            .collect();
        v.sort();
        v
    };
    let dead = dead_letters(&s, &dead_uri).await;
    let got: Vec<(i32, i64, Vec<u8>)> = dead.iter().map(|d| (d.0, d.1, d.2.clone())).collect();
    assert_eq!(
        got, expected,
        "every rejected record once, with its raw bytes"
    );
    assert!(
        dead.iter()
            .all(|d| d.3 == "decode" && d.4.contains("invalid JSON")),
        "{:?}",
        dead[0]
    );
    assert_eq!(s.rows().await.len(), 160);

    // Replay everything into the table: the rows come again (that is what a reset
    // asks for), the dead letters do not.
    let cfg = s.config(&extra);
    tributary::ops::offsets::set(
        &cfg,
        &[],
        tributary::ops::offsets::Target::Offset(0),
        false,
        false,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let mut run = start(s.config(&extra));
    run.committed(&s.topic, &last_offsets(&produced)).await;
    assert_eq!(run.stop().await.rejected, 40, "re-rejected on replay");
    assert_eq!(s.rows().await.len(), 320);
    assert_eq!(
        dead_letters(&s, &dead_uri).await.len(),
        40,
        "dead letters stay exactly once"
    );
}

/// Two apps sharing a table whose legacy txn ids collided (`orders` + topic
/// `eu-x` and `orders-eu` + topic `x` both gave `orders-eu-x-0`): the second app
/// must not mistake the first's offsets for its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_id_encoding_keeps_apps_whose_legacy_ids_collided_apart() {
    let s = Scenario::new("app-id", 1).await;
    let stamp = s.topic.replace('-', "");
    let (app_a, topic_a) = (format!("orders{stamp}"), format!("eu-{stamp}"));
    let (app_b, topic_b) = (format!("orders{stamp}-eu"), stamp.clone());
    let tp_a = TopicPartition::new(topic_a.as_str(), 0);
    let tp_b = TopicPartition::new(topic_b.as_str(), 0);
    assert_eq!(
        tributary::offsets::store::legacy_txn_app_id(&app_a, &tp_a),
        tributary::offsets::store::legacy_txn_app_id(&app_b, &tp_b),
        "the two apps collide under the legacy encoding"
    );
    let producer = producer(&s.servers.brokers);
    let mut done = std::collections::BTreeMap::new();
    for (app, topic, n) in [(&app_a, &topic_a, 10u64), (&app_b, &topic_b, 5)] {
        create_topic(&s.servers.brokers, topic, 1).await;
        let produced = produce(&producer, topic, (0..n).map(|i| (0, event(i)))).await;
        let text = s
            .config_toml("[flush]\nmax_age = \"500ms\"")
            .replace(
                &format!("app_id = \"{}\"", s.app_id),
                &format!("app_id = \"{app}\""),
            )
            .replace(
                &format!("topics = [\"{}\"]", s.topic),
                &format!("topics = [\"{topic}\"]"),
            );
        let mut run = start(parse_config(&text));
        run.committed(topic, &last_offsets(&produced)).await;
        run.stop().await;
        done.insert(topic.clone(), n);
    }
    let t = s.table().await.unwrap();
    for (topic, n) in &done {
        let rows = query(
            &t,
            &format!("SELECT count(*) AS n FROM t WHERE _topic = '{topic}'"),
        )
        .await;
        let got = rows[0]
            .column(0)
            .as_primitive::<deltalake::arrow::datatypes::Int64Type>()
            .value(0);
        assert_eq!(got as u64, *n, "rows of {topic}");
    }
    let a = tributary::sink::table::stored_offset(&t, &app_a, &tp_a)
        .await
        .unwrap();
    let b = tributary::sink::table::stored_offset(&t, &app_b, &tp_b)
        .await
        .unwrap();
    assert_eq!((a, b), (Some(9), Some(4)));
}

/// A table written with the legacy txn ids keeps its progress: the daemon resumes
/// after the legacy offset, then stores the new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_id_legacy_offsets_are_resumed_from_and_migrated() {
    use deltalake::kernel::Transaction;
    use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
    let s = Scenario::new("app-id-legacy", 2).await;
    let cfg = s.config("[flush]\nmax_age = \"500ms\"");
    let opened = tributary::sink::table::open_or_create(&cfg.table, &cfg.storage, None)
        .await
        .unwrap();
    // As today's main wrote them: partition 0 done up to offset 4, partition 1 to 2.
    let legacy = [(0, 4), (1, 2)].map(|(p, v)| {
        let tp = TopicPartition::new(s.topic.as_str(), p);
        Transaction::new(
            tributary::offsets::store::legacy_txn_app_id(&s.app_id, &tp),
            v,
        )
    });
    let t = &opened.table;
    CommitBuilder::from(CommitProperties::default().with_application_transactions(legacy.to_vec()))
        .build(
            Some(t.snapshot().unwrap()),
            t.log_store(),
            deltalake::protocol::DeltaOperation::Write {
                mode: deltalake::protocol::SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await
        .unwrap();
    let producer = producer(&s.servers.brokers);
    let produced = produce(
        &producer,
        &s.topic,
        (0..20u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;
    let mut run = start(cfg.clone());
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await;
    let rows = s.rows().await;
    let mut want: Vec<(i32, i64)> = (5..10)
        .map(|o| (0, o))
        .chain((3..10).map(|o| (1, o)))
        .collect();
    want.sort();
    let mut got = rows.clone();
    got.sort();
    assert_eq!(got, want, "only the records after the legacy offsets");
    let t = s.table().await.unwrap();
    for p in 0..2 {
        let tp = TopicPartition::new(s.topic.as_str(), p);
        let new_id = tributary::offsets::store::txn_app_id(&s.app_id, &tp);
        let v = t
            .snapshot()
            .unwrap()
            .transaction_version(t.log_store().as_ref(), new_id)
            .await
            .unwrap();
        assert_eq!(v, Some(9), "partition {p} stored under the new id");
    }
}

/// A topic created while the daemon runs and matching `topic_pattern` is picked
/// up by the default metadata refresh (30 s, librdkafka's own is 5 minutes) and
/// ingested exactly once from its first offset under `earliest`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_partitions_of_a_new_topic_matching_the_pattern_are_ingested_within_the_refresh() {
    let s = Scenario::new("new-topic", 1).await;
    let producer = producer(&s.servers.brokers);
    let first = produce(&producer, &s.topic, (0..10u64).map(|i| (0, event(i)))).await;
    let toml = s.config_toml("[flush]\nmax_age = \"500ms\"").replace(
        &format!("topics = [\"{}\"]", s.topic),
        &format!("topic_pattern = \"^{}.*\"", s.topic),
    );
    let mut run = start(parse_config(&toml));
    run.committed(&s.topic, &last_offsets(&first)).await;
    let later = format!("{}-later", s.topic);
    create_topic(&s.servers.brokers, &later, 2).await;
    let created = std::time::Instant::now();
    let produced = produce(
        &producer,
        &later,
        (0..30u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;
    let stats = run.stats.clone();
    let want = last_offsets(&produced);
    let later_tp = |p| TopicPartition::new(later.as_str(), p);
    // The refresh (30 s) plus a rebalance (about half the test's 6 s session timeout).
    eventually(Duration::from_secs(60), "the new topic committed", || {
        let c = stats.committed_offsets();
        let done = want
            .iter()
            .all(|(p, last)| c.get(&later_tp(*p)).copied() == *last);
        async move { done.then_some(()) }
    })
    .await;
    let picked_up = created.elapsed();
    run.stop().await;
    let t = s.table().await.unwrap();
    let got = topic_rows_of(&t, &later).await;
    let (lost, duplicated) = diff(&got, &produced);
    eprintln!(
        "new topic: committed {:.1}s after it was created; {} rows, lost {lost}, duplicated {duplicated}",
        picked_up.as_secs_f64(),
        got.len()
    );
    assert_eq!((got.len(), lost, duplicated), (30, 0, 0));
}

/// Under `auto_offset_reset = "latest"` a topic created mid-run that matches
/// `topic_pattern` starts at its end as of discovery: what was produced before is
/// skipped, and everything produced after its partitions were assigned (their ends
/// stored in the table at once) is ingested exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_partitions_of_a_new_topic_under_latest_start_at_discovery_and_lose_nothing_after() {
    let s = Scenario::new("new-topic-latest", 1).await;
    let producer = producer(&s.servers.brokers);
    let toml = s
        .config_toml("[flush]\nmax_age = \"500ms\"")
        .replace(
            &format!("topics = [\"{}\"]", s.topic),
            &format!("topic_pattern = \"^{}.*\"", s.topic),
        )
        .replace(
            "auto_offset_reset = \"earliest\"",
            "auto_offset_reset = \"latest\"",
        );
    let cfg = parse_config(&toml);
    let run = start(cfg);
    eventually(Duration::from_secs(60), "the first topic assigned", || {
        let n = run
            .stats
            .assigned_partitions
            .load(std::sync::atomic::Ordering::Relaxed);
        async move { (n > 0).then_some(()) }
    })
    .await;
    let later = format!("{}-later", s.topic);
    create_topic(&s.servers.brokers, &later, 2).await;
    // Before discovery (the metadata refresh is 30 s): skipped by "latest".
    let before = produce(
        &producer,
        &later,
        (0..10u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;
    let later_tps: Vec<TopicPartition> = (0..2)
        .map(|p| TopicPartition::new(later.as_str(), p))
        .collect();
    // Discovered and assigned: the ends are stored in the table at once.
    let pinned = eventually(
        Duration::from_secs(60),
        "the new topic's ends stored",
        || {
            let tps = later_tps.clone();
            let s = &s;
            async move {
                let t = s.table().await?;
                let stored = tributary::sink::table::stored_offsets(&t, &s.app_id, &tps)
                    .await
                    .ok()?;
                tps.iter()
                    .map(|tp| stored.get(tp).copied().flatten())
                    .collect::<Option<Vec<i64>>>()
            }
        },
    )
    .await;
    assert_eq!(
        pinned,
        vec![before[&0].len() as i64 - 1, before[&1].len() as i64 - 1],
        "the ends at discovery"
    );
    let after = produce(
        &producer,
        &later,
        (10..40u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;
    let stats = run.stats.clone();
    let want = last_offsets(&after);
    eventually(Duration::from_secs(60), "the new topic committed", || {
        let c = stats.committed_offsets();
        let done = want
            .iter()
            .all(|(p, last)| c.get(&TopicPartition::new(later.as_str(), *p)).copied() == *last);
        async move { done.then_some(()) }
    })
    .await;
    run.stop().await;
    let t = s.table().await.unwrap();
    let got = topic_rows_of(&t, &later).await;
    let (lost, duplicated) = diff(&got, &after);
    let skipped = got
        .iter()
        .filter(|(p, o)| before.get(p).is_some_and(|offs| offs.contains(o)))
        .count();
    eprintln!(
        "new topic under latest: ends stored at {pinned:?}; {} rows, lost {lost}, duplicated \
         {duplicated}, rows from before discovery {skipped}",
        got.len()
    );
    assert_eq!((got.len(), lost, duplicated, skipped), (30, 0, 0, 0));
}

/// (partition, offset) of `topic`'s rows in `t`, sorted.
async fn topic_rows_of(t: &deltalake::DeltaTable, topic: &str) -> Vec<(i32, i64)> {
    let rows = query(
        t,
        &format!("SELECT _partition, _offset FROM t WHERE _topic = '{topic}'"),
    )
    .await;
    let mut got: Vec<(i32, i64)> = rows
        .iter()
        .flat_map(|b| {
            let p = b
                .column(0)
                .as_primitive::<deltalake::arrow::datatypes::Int32Type>()
                .clone();
            let o = b
                .column(1)
                .as_primitive::<deltalake::arrow::datatypes::Int64Type>()
                .clone();
            (0..b.num_rows()).map(move |i| (p.value(i), o.value(i)))
        })
        .collect();
    got.sort();
    got
}
