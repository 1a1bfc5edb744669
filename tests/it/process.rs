//! The daemon as a real process: kill -9 and restart, and two daemons sharing a
//! consumer group. Checked by reading every (partition, offset) back from the table.

use std::time::Duration;

use crate::harness::*;

const FLUSH: &str = "[flush]\nmax_rows = 400\nmax_age = \"1s\"";

const CATCH_UP: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_is_exactly_once() {
    let s = Scenario::new("kill9", 4).await;
    let cfg = s.write_config(FLUSH);
    let producer = BackgroundProducer::start(&s.servers.brokers, &s.topic, 4, 6000, 100);
    let mut first = Daemon::start(&cfg, s.dir.path());
    // Kill it once it has committed something and is in the middle of more.
    s.rows_after_first_commits().await;
    first.kill9();
    let at_kill = s.rows().await.len();
    let mut second = Daemon::start(&cfg, s.dir.path());
    let produced = producer.finish().await;
    s.wait_caught_up(&produced, 4, CATCH_UP).await;
    second.stop_cleanly().await;

    let rows = s.rows().await;
    let (lost, duplicated) = diff(&rows, &produced);
    assert!(
        at_kill > 0 && at_kill < 6000,
        "killed mid-stream ({at_kill} rows at kill)"
    );
    assert_eq!((rows.len(), lost, duplicated), (6000, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_one_stopped_midway_is_exactly_once() {
    let s = Scenario::new("two-daemons", 4).await;
    let cfg = s.write_config(FLUSH);
    let producer = BackgroundProducer::start(&s.servers.brokers, &s.topic, 4, 6000, 100);
    let mut a = Daemon::start(&cfg, s.dir.path());
    let mut b = Daemon::start(&cfg, s.dir.path());
    // Both working: each has logged an assignment and the table moves.
    eventually(
        Duration::from_secs(90),
        "both daemons assigned and committing",
        || {
            let both = a.log_text().contains("partitions assigned")
                && b.log_text().contains("partitions assigned");
            let s = &s;
            async move { (both && s.version().await >= Some(3)).then_some(()) }
        },
    )
    .await;
    a.stop_cleanly().await;
    let produced = producer.finish().await;
    s.wait_caught_up(&produced, 4, CATCH_UP).await;
    // The remaining daemon takes over the stopped one's partitions (a rebalance
    // takes a few seconds; `a` may have committed everything it read first).
    eventually(
        Duration::from_secs(60),
        "the remaining daemon to take over the stopped one's partitions",
        || {
            let n = b.log_text().matches("partitions assigned").count();
            async move { (n >= 2).then_some(()) }
        },
    )
    .await;
    b.stop_cleanly().await;

    let rows = s.rows().await;
    let (lost, duplicated) = diff(&rows, &produced);
    assert_eq!((rows.len(), lost, duplicated), (6000, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_logs() {
    let s = Scenario::new("secrets", 1).await;
    // moto accepts any credentials; librdkafka ignores sasl.* without SASL enabled,
    // but the values still travel through the config and the client setup.
    let text = s
        .config_toml("[flush]\nmax_age = \"1s\"")
        .replace(
            "secret_access_key = \"test\"",
            "secret_access_key = \"s3-SECRET-4711\"",
        )
        .replace(
            "\"heartbeat.interval.ms\" = \"500\"",
            "\"heartbeat.interval.ms\" = \"500\"\n\"sasl.password\" = \"kafka-SECRET-0815\"",
        );
    let path = s.dir.path().join("secrets.toml");
    std::fs::write(&path, text).unwrap();
    let producer = producer(&s.servers.brokers);
    let produced = produce(&producer, &s.topic, (0..20u64).map(|i| (0, event(i)))).await;
    // Debug logging everywhere: the most a log can reveal.
    let log = s.dir.path().join("secrets.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tributary"))
        .args(["--log-level", "debug", "ingest", "--config"])
        .arg(&path)
        .env("RUST_LOG", "")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    s.wait_caught_up(&produced, 1, CATCH_UP).await;
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("committed"), "the run logged its work");
    for secret in ["s3-SECRET-4711", "kafka-SECRET-0815"] {
        assert!(!text.contains(secret), "{secret} leaked into the logs");
    }
}
