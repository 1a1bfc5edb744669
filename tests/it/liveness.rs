//! Liveness under pressure: the daemon keeps serving the consumer group while it
//! cannot make progress, and exits in time.

use std::time::{Duration, Instant};

use deltalake::arrow::array::AsArray;

use crate::harness::*;

const CATCH_UP: Duration = Duration::from_secs(180);

/// CPU seconds (user + system) of the daemon's thread named `name`.
fn thread_cpu_seconds(pid: u32, name: &str) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        // Fields after the command (which ends with ')'): utime and stime are the
        // 12th and 13th, in clock ticks of 1/100 s.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = rest
            .split(' ')
            .skip(11)
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        return (f[0] + f[1]) as f64 / 100.0;
    }
    panic!("no thread named {name} in process {pid}");
}

/// A config through `s3` that back-pressures soon: small chunks, a channel of one,
/// windows of 500 rows; `properties` go into `[kafka.properties]`.
fn back_pressure_config(s: &Scenario, s3: &Outage, properties: &str) -> std::path::PathBuf {
    let text = s
        .config_toml_via(
            s3,
            "[flush]\nmax_rows = 500\nmax_age = \"300ms\"\n[commit]\nmax_backoff = \"2s\"\n",
        )
        .replace(
            "[kafka.properties]\n",
            &format!(
                "max_chunk_records = 20\nchannel_capacity = 1\n\n[kafka.properties]\n{properties}"
            ),
        );
    let cfg = s
        .dir
        .path()
        .join(format!("{}.toml", unique("back-pressure")));
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// Back-pressure held longer than `max.poll.interval.ms`: S3 is cut while the
/// pipeline holds a full channel of full chunks. The poll thread must keep
/// polling (the member stays in the group, no "maximum poll interval exceeded")
/// at near-zero CPU, and the table ends exactly once after S3 is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_pressure_keeps_polling_at_near_zero_cpu_and_stays_in_the_group() {
    let s = Scenario::new("back-pressure", 4).await;
    let s3 = s.storage_proxy().await;
    let records = (0..3000u64).map(|i| ((i % 4) as i32, event(i)));
    let produced = produce(&producer(&s.servers.brokers), &s.topic, records).await;
    let cfg = back_pressure_config(&s, &s3, "\"max.poll.interval.ms\" = \"7000\"\n");
    let mut daemon = Daemon::start(&cfg, s.dir.path());
    s.rows_after_first_commits().await;
    s3.take_down();
    // Let the channel fill and the consumer pause, then measure the poll thread
    // over a hold longer than max.poll.interval.ms.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = daemon.child.id();
    let (cpu0, t0) = (thread_cpu_seconds(pid, "kafka-poll"), Instant::now());
    while t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "daemon exited:\n{}",
            daemon.log_text()
        );
    }
    let busy = (thread_cpu_seconds(pid, "kafka-poll") - cpu0) / t0.elapsed().as_secs_f64();
    s3.bring_up();
    s.wait_caught_up(&produced, 4, CATCH_UP).await;
    daemon.stop_cleanly().await;
    let log = daemon.log_text();
    let rows = s.rows().await;
    let (lost, duplicated) = diff(&rows, &produced);
    let assigns = log.matches("partitions assigned").count();
    eprintln!(
        "back-pressure: kafka-poll thread busy {:.1}% of a core over a 10 s hold; \
         {} rows, lost {lost}, duplicated {duplicated}; assignments {assigns}",
        busy * 100.0,
        rows.len()
    );
    assert!(
        busy < 0.10,
        "the poll thread spun at {:.0}% of a core",
        busy * 100.0
    );
    assert!(
        !log.contains("maximum poll interval"),
        "the member left the group during back-pressure:\n{log}"
    );
    assert_eq!(assigns, 1, "one assignment, no rejoin:\n{log}");
    assert_eq!((lost, duplicated), (0, 0));
}

/// `auto_offset_reset = "latest"`: a rewind before the first data commit (here an
/// S3 outage fails the first window's upload) must continue from the end as it
/// was at assignment, not from the end again, which would skip every record
/// produced meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_is_resolved_once_so_a_rewind_before_the_first_commit_skips_nothing() {
    let s = Scenario::new("latest", 2).await;
    let s3 = s.storage_proxy().await;
    let producer = producer(&s.servers.brokers);
    // Produced before the daemon starts: skipped by "latest".
    produce(
        &producer,
        &s.topic,
        (0..10u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;
    let text = s
        .config_toml_via(
            &s3,
            "[flush]\nmax_age = \"500ms\"\n[commit]\nmax_backoff = \"1s\"\n",
        )
        .replace(
            "auto_offset_reset = \"earliest\"",
            "auto_offset_reset = \"latest\"",
        );
    let mut run = crate::ingest::start(parse_config(&text));
    run.holds(2, Duration::from_secs(60)).await;
    // Storage goes away: the first window cannot be uploaded and is rewound.
    s3.take_down();
    let mut after = produce(
        &producer,
        &s.topic,
        (10..30u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;
    // Storage stays down until the window's upload has failed (after the object
    // store's own retries, whose jittered backoff takes 2 s to tens of seconds)
    // and the pipeline is recovering; the rewind then waits for storage.
    eventually(
        Duration::from_secs(180),
        "the first window to fail and the pipeline to recover",
        || async { (!run.stats.ready.load(std::sync::atomic::Ordering::Relaxed)).then_some(()) },
    )
    .await;
    s3.bring_up();
    for (p, offsets) in produce(
        &producer,
        &s.topic,
        (30..40u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await
    {
        after.entry(p).or_default().extend(offsets);
    }
    run.committed(&s.topic, &last_offsets(&after)).await;
    let rewinds = run.stats.rewinds.load(std::sync::atomic::Ordering::Relaxed);
    run.stop().await;
    assert!(rewinds > 0, "the outage made the pipeline rewind");
    let rows = s.rows().await;
    let (lost, duplicated) = diff(&rows, &after);
    eprintln!(
        "latest: {} rows of the 30 produced after assignment; lost {lost}, duplicated {duplicated}",
        rows.len()
    );
    assert_eq!((rows.len(), lost, duplicated), (30, 0, 0), "rows {rows:?}");
}

/// SIGTERM while S3 cuts every request to the log: the daemon exits within its shutdown
/// budget (up to 10 s back to the loop, then 60 s for all tables together, inside
/// the manifest's 90 s grace period), even when the open window is due and the last commit keeps retrying;
/// the next start resumes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_outage_exits_within_the_grace_period_and_resumes_exactly() {
    let s = Scenario::new("shutdown-outage", 2).await;
    let s3 = s.storage_proxy().await;
    let producer = producer(&s.servers.brokers);
    let mut produced = produce(
        &producer,
        &s.topic,
        (0..4000u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;
    let text = s.config_toml_via(
        &s3,
        "[flush]\nmax_rows = 100\nmax_age = \"500ms\"\n[commit]\nmax_backoff = \"2s\"\n",
    );
    let cfg = s.dir.path().join("shutdown.toml");
    std::fs::write(&cfg, text).unwrap();
    let mut daemon = Daemon::start(&cfg, s.dir.path());
    s.rows_after_first_commits().await;
    // The log goes away (every request under _delta_log/ is cut) while data files
    // still upload: the next commit retries, the window behind it fills up.
    s3.refuse(Some("/_delta_log/"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = Instant::now();
    let status = daemon.terminate(Duration::from_secs(85)).await;
    let took = asked.elapsed();
    eprintln!(
        "shutdown during outage: exited with {status} {:.1}s after SIGTERM",
        took.as_secs_f64()
    );
    assert!(
        took < Duration::from_secs(75),
        "exit took {took:?}:\n{}",
        daemon.log_text()
    );
    s3.refuse(None);
    for (p, o) in produce(
        &producer,
        &s.topic,
        (4000..4100u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await
    {
        produced.entry(p).or_default().extend(o);
    }
    let mut again = Daemon::start(&cfg, s.dir.path());
    s.wait_caught_up(&produced, 2, CATCH_UP).await;
    again.stop_cleanly().await;
    let rows = s.rows().await;
    let (lost, duplicated) = diff(&rows, &produced);
    assert_eq!((rows.len(), lost, duplicated), (4100, 0, 0));
}

/// A fenced static member (another instance joined with the same
/// `group.instance.id`): librdkafka raises a fatal error, and the pipeline must
/// stop with it instead of staying up without consuming. Tansu does not fence
/// static members, so librdkafka's own mock cluster answers the heartbeat with
/// FENCED_INSTANCE_ID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_kafka_error_of_a_fenced_static_member_stops_the_pipeline() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    init_logs();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("fenced", 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
app_id = "fenced"
[kafka]
brokers = "{brokers}"
topics = ["fenced"]
[kafka.properties]
"group.instance.id" = "member-1"
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "300"
[table]
uri = "{uri}"
schema_file = "{schema}"
"#,
        brokers = cluster.bootstrap_servers(),
        uri = url::Url::from_directory_path(dir.path()).unwrap(),
        schema = demo_schema_path().display(),
    );
    let run = crate::ingest::start(parse_config(&text));
    run.holds(1, Duration::from_secs(60)).await;
    cluster.request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID; 20],
    );
    let err = run
        .ended_within(Duration::from_secs(30))
        .await
        .expect_err("the pipeline stops on a fatal error");
    let text = err.to_string();
    eprintln!("fatal: the pipeline stopped with: {text}");
    assert!(text.contains("fatal kafka error"), "{text}");
}

/// Another writer (here: `table::evolve`, as another worker or an operator's
/// ALTER TABLE ADD COLUMN would) adds a nullable column while the daemon runs:
/// the daemon adopts the table's new schema (the column is null in its rows) and
/// goes on, instead of stopping on a schema mismatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changed_elsewhere_is_adopted_and_ingestion_goes_on() {
    let s = Scenario::new("schema-elsewhere", 2).await;
    let producer = producer(&s.servers.brokers);
    let mut produced = produce(
        &producer,
        &s.topic,
        (0..100u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;
    let cfg = s.config("[flush]\nmax_age = \"500ms\"");
    let mut run = crate::ingest::start(cfg.clone());
    run.committed(&s.topic, &last_offsets(&produced)).await;

    let mut t = s.table().await.unwrap();
    let mut wider: deltalake::kernel::StructType =
        tributary::schema::parse_schema_json(tributary::ops::demo::DEMO_SCHEMA).unwrap();
    wider = deltalake::kernel::StructType::try_new(wider.fields().cloned().chain([
        deltalake::kernel::StructField::new("note", deltalake::kernel::DataType::STRING, true),
    ]))
    .unwrap();
    tributary::sink::table::evolve(&mut t, &wider, &cfg.table.metadata_columns, &[])
        .await
        .unwrap();

    for (p, o) in produce(
        &producer,
        &s.topic,
        (100..200u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await
    {
        produced.entry(p).or_default().extend(o);
    }
    run.committed(&s.topic, &last_offsets(&produced)).await;
    // And windows after that one, written by a writer opened on the new schema.
    for round in 2..4u64 {
        let range = round * 100..round * 100 + 100;
        for (p, o) in produce(
            &producer,
            &s.topic,
            range.map(|i| ((i % 2) as i32, event(i))),
        )
        .await
        {
            produced.entry(p).or_default().extend(o);
        }
        run.committed(&s.topic, &last_offsets(&produced)).await;
    }
    run.stop().await;
    let rows = s.rows().await;
    let (lost, duplicated) = diff(&rows, &produced);
    assert_eq!((rows.len(), lost, duplicated), (400, 0, 0));
    let t = s.table().await.unwrap();
    let nulls = query(&t, "SELECT count(*) FROM t WHERE note IS NULL").await;
    let n = nulls[0]
        .column(0)
        .as_primitive::<deltalake::arrow::datatypes::Int64Type>()
        .value(0);
    assert_eq!(n, 400, "the new column reads null in every row");
}

/// A `{topic}` table is opened at assignment, inside the rebalance callback. With
/// S3 unreachable then, the daemon must answer the group, keep running and open
/// the table once S3 is back (it used to exit with the storage error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_errors_that_are_transient_are_retried_until_the_table_opens() {
    let s = Scenario::new("assign-transient", 2).await;
    let s3 = s.storage_proxy().await;
    let produced = produce(
        &producer(&s.servers.brokers),
        &s.topic,
        (0..200u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;
    let uri = format!("s3://{}/t/{}", s.bucket, s.topic);
    let text = s
        .config_toml_via(
            &s3,
            "[flush]\nmax_age = \"500ms\"\n[commit]\nmax_backoff = \"1s\"\n",
        )
        .replace(&s.table_uri(), &format!("s3://{}/t/{{topic}}", s.bucket));
    let cfg = s.dir.path().join("assign-transient.toml");
    std::fs::write(&cfg, text).unwrap();
    s3.take_down();
    let mut daemon = Daemon::start(&cfg, s.dir.path());
    log_shows(
        &mut daemon,
        "cannot open the partition's table; will retry",
        Duration::from_secs(60),
    )
    .await;
    // A few retries with S3 still down: the daemon stays up.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        assert!(
            daemon.child.try_wait().unwrap().is_none(),
            "daemon exited during the outage:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s3.bring_up();
    let opened_at = Instant::now();
    let want = produced.values().map(Vec::len).sum::<usize>();
    eventually(CATCH_UP, "every record in the per-topic table", || async {
        (s.rows_at(&uri).await.len() >= want).then_some(())
    })
    .await;
    daemon.stop_cleanly().await;
    let rows = s.rows_at(&uri).await;
    let (lost, duplicated) = diff(&rows, &produced);
    eprintln!(
        "assign errors (transient): daemon up through the outage; table opened and caught up \
         {:.1}s after S3 came back; {} rows, lost {lost}, duplicated {duplicated}",
        opened_at.elapsed().as_secs_f64(),
        rows.len()
    );
    assert_eq!((lost, duplicated), (0, 0));
}

/// Refused credentials are permanent: opening a `{topic}` table at assignment, and
/// reading a table's stored offsets at assignment, must stop the daemon with a
/// message that says what to fix. The offset read used to retry such errors
/// forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_errors_that_are_permanent_stop_the_daemon_with_what_to_fix() {
    let (s, s3) = scenario_with_records("assign-permanent").await;

    // A `{topic}` table, S3 refusing the credentials from the start.
    let text = s
        .config_toml_via(&s3, "")
        .replace(&s.table_uri(), &format!("s3://{}/t/{{topic}}", s.bucket));
    let cfg = s.dir.path().join("assign-permanent-template.toml");
    std::fs::write(&cfg, text).unwrap();
    s3.deny(Some(&s.bucket));
    let mut daemon = Daemon::start(&cfg, s.dir.path());
    stops_saying_access_denied(&mut daemon, "table open").await;
}

/// The stored-offset read at assignment used to retry every error forever: a
/// named table (opened at start) whose offsets are refused when the partitions
/// are assigned (the credentials were revoked meanwhile) must stop the daemon
/// with what to fix. On Tansu: its group join takes seconds after the table
/// opens, the window in which the test revokes the credentials (Apache Kafka
/// assigns within milliseconds, before the test can).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_errors_reading_stored_offsets_that_are_permanent_stop_the_daemon() {
    let (s, s3) = with_records(Scenario::on_tansu("assign-offsets", 2).await).await;
    let cfg = s.dir.path().join("assign-permanent-offsets.toml");
    std::fs::write(&cfg, s.config_toml_via(&s3, "")).unwrap();
    let mut daemon = Daemon::start(&cfg, s.dir.path());
    log_shows(&mut daemon, "table open", Duration::from_secs(60)).await;
    s3.deny(Some(&s.bucket));
    let log = stops_saying_access_denied(&mut daemon, "stored offsets").await;
    assert!(
        !log.contains("starting partition after its stored offset"),
        "the offsets were read before the credentials were refused; the test raced:\n{log}"
    );
}

/// A 2-partition scenario behind a storage proxy, with 20 records produced.
async fn scenario_with_records(name: &str) -> (Scenario, Outage) {
    with_records(Scenario::new(name, 2).await).await
}

/// `s` behind a storage proxy, with 20 records produced.
async fn with_records(s: Scenario) -> (Scenario, Outage) {
    let s3 = s.storage_proxy().await;
    produce(
        &producer(&s.servers.brokers),
        &s.topic,
        (0..20u64).map(|i| ((i % 2) as i32, event(i))),
    )
    .await;
    (s, s3)
}

/// The daemon stops by itself, non-zero, with the access-denied hint; its log.
async fn stops_saying_access_denied(daemon: &mut Daemon, case: &str) -> String {
    let (status, log) = exits_within(daemon, Duration::from_secs(60)).await;
    eprintln!(
        "assign errors (permanent, {case}): exit {status}; {}",
        log.lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_default()
    );
    assert!(!status.success(), "{log}");
    assert!(log.contains("Access denied: the credentials need"), "{log}");
    log
}

/// Python deltalake (delta-rs' own bindings, a different release): add a nullable
/// column to the table at `argv[1]` on the S3 server at `argv[2]`.
const ADD_NOTE_COLUMN: &str = r#"
import sys
import deltalake
opts = {
    "AWS_ENDPOINT_URL": sys.argv[2],
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}
t = deltalake.DeltaTable(sys.argv[1], storage_options=opts)
t.alter.add_columns([deltalake.Field("note", "string", nullable=True)])
print(t.version())
"#;

/// A nullable column added by another writer (the Python deltalake package) while
/// two daemons share the table: both adopt it and carry on, exactly once, and the
/// records that carry the field fill it once the daemons have seen the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changed_elsewhere_by_another_writer_is_adopted_by_two_daemons() {
    let python = std::env::var("TRIBUTARY_TEST_PYTHON")
        .expect("TRIBUTARY_TEST_PYTHON is set by tests/run.sh (the interop interpreter)");
    let s = Scenario::new("schema-engine", 4).await;
    let producer = producer(&s.servers.brokers);
    let with_note = |i: u64| {
        let mut v: serde_json::Value = serde_json::from_str(&event(i)).unwrap();
        v["note"] = serde_json::Value::from(format!("n{i}"));
        v.to_string()
    };
    let mut produced = produce(
        &producer,
        &s.topic,
        (0..200u64).map(|i| ((i % 4) as i32, event(i))),
    )
    .await;
    let cfg = s.write_config("[flush]\nmax_age = \"500ms\"");
    let mut a = Daemon::start(&cfg, s.dir.path());
    let mut b = Daemon::start(&cfg, s.dir.path());
    s.wait_caught_up(&produced, 4, CATCH_UP).await;

    let out = std::process::Command::new(&python)
        .args(["-c", ADD_NOTE_COLUMN, &s.table_uri(), &s.servers.s3])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python deltalake: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Round 1 may still be decoded by a daemon that has not seen the change (its
    // commit then lands through the metadata-changed retry, the note null); by
    // round 2 both have committed since the change and decode into the new column.
    for round in 1..3u64 {
        let range = round * 200..round * 200 + 200;
        for (p, o) in produce(
            &producer,
            &s.topic,
            range.map(|i| ((i % 4) as i32, with_note(i))),
        )
        .await
        {
            produced.entry(p).or_default().extend(o);
        }
        s.wait_caught_up(&produced, 4, CATCH_UP).await;
    }
    a.stop_cleanly().await;
    b.stop_cleanly().await;
    let both = format!("{}{}", a.log_text(), b.log_text());
    let rows = s.rows().await;
    let (lost, duplicated) = diff(&rows, &produced);
    let t = s.table().await.unwrap();
    let count = |sql: &str| {
        let t = t.clone();
        let sql = sql.to_owned();
        async move {
            query(&t, &sql).await[0]
                .column(0)
                .as_primitive::<deltalake::arrow::datatypes::Int64Type>()
                .value(0)
        }
    };
    let noted = count("SELECT count(*) FROM t WHERE note IS NOT NULL").await;
    let wrong = count(
        "SELECT count(*) FROM t WHERE note IS NOT NULL AND note <> concat('n', CAST(event_id AS VARCHAR))",
    )
    .await;
    let round2 = count("SELECT count(*) FROM t WHERE event_id >= 400 AND note IS NOT NULL").await;
    eprintln!(
        "schema changed by python deltalake under two daemons: {} rows, lost {lost}, duplicated \
         {duplicated}; note filled in {noted} rows (round 2: {round2} of 200), wrong {wrong}",
        rows.len()
    );
    assert_eq!((rows.len(), lost, duplicated), (600, 0, 0));
    assert_eq!(wrong, 0);
    assert_eq!(round2, 200, "round 2 decoded into the new column:\n{both}");
    assert!(!both.contains("SchemaMismatch"), "{both}");
}

/// Back-pressure with the commit stuck on storage: a second daemon joining the
/// group gets its partitions within about the session timeout (6 s here, plus
/// Tansu's join delay of about half of it), not after the stuck commit's revoke
/// budget (30 s). The revoke answers once half the session timeout has passed; the
/// stuck commit, if it lands later, is stale for the new owner or makes the new
/// owner's commit stale. The table ends exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_pressure_lets_a_joining_daemon_take_its_partitions_within_the_session_timeout() {
    let s = Scenario::new("back-pressure-join", 4).await;
    let s3 = s.storage_proxy().await;
    let records = (0..3000u64).map(|i| ((i % 4) as i32, event(i)));
    let producer = producer(&s.servers.brokers);
    let mut produced = produce(&producer, &s.topic, records).await;
    let cfg = back_pressure_config(&s, &s3, "");
    let mut a = Daemon::start(&cfg, s.dir.path());
    s.rows_after_first_commits().await;
    // Only commits fail (reads and data uploads go on): the commit retries.
    s3.refuse(Some(&format!("PUT /{}/events/_delta_log/", s.bucket)));
    // More records, whose commit cannot land.
    let more = (3000..5000u64).map(|i| ((i % 4) as i32, event(i)));
    for (p, o) in produce(&producer, &s.topic, more).await {
        produced.entry(p).or_default().extend(o);
    }
    log_shows(&mut a, "commit failed; retrying", Duration::from_secs(60)).await;
    let joined = Instant::now();
    let mut b = Daemon::start(&cfg, s.dir.path());
    log_shows(&mut b, "partitions assigned", Duration::from_secs(60)).await;
    let took = joined.elapsed();
    s3.refuse(None);
    s.wait_caught_up(&produced, 4, CATCH_UP).await;
    a.stop_cleanly().await;
    b.stop_cleanly().await;
    let rows = s.rows().await;
    let (lost, duplicated) = diff(&rows, &produced);
    eprintln!(
        "back-pressure join: the second daemon had partitions {:.1}s after it started \
         (session timeout 6 s); {} rows, lost {lost}, duplicated {duplicated}",
        took.as_secs_f64(),
        rows.len()
    );
    assert!(
        took < Duration::from_secs(12),
        "the joining daemon waited {took:?} for partitions:\n{}",
        a.log_text()
    );
    assert_eq!((lost, duplicated), (0, 0));
}
