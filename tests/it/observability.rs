//! The metrics and health endpoint of a running pipeline.

use std::time::Duration;

use tributary::telemetry::metrics::METRICS;

use crate::harness::*;
use crate::ingest::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_every_declared_series() {
    let s = Scenario::new("metrics", 2).await;
    let producer = producer(&s.servers.brokers);
    let mut payloads: Vec<(i32, String)> =
        (0..200u64).map(|i| ((i % 2) as i32, event(i))).collect();
    payloads[3].1 = "garbage".into();
    let produced = produce(&producer, &s.topic, payloads).await;
    let mut run =
        start(s.config("[flush]\nmax_age = \"1s\"\n[observability]\nlisten = \"127.0.0.1:0\"\n"));
    run.committed(&s.topic, &last_offsets(&produced)).await;
    let addr = *run.stats.metrics_addr.get().expect("endpoint bound");

    assert_eq!(http_get(addr, "/healthz").0, 200);
    assert_eq!(http_get(addr, "/readyz"), (200, "ready\n".to_owned()));
    // librdkafka statistics (every 5 s) bring the high watermarks for the lag series.
    let body = eventually(
        Duration::from_secs(30),
        "lag series for both partitions",
        || async {
            let (status, body) = http_get(addr, "/metrics");
            assert_eq!(status, 200);
            (body.matches("tributary_partition_lag{").count() == 2).then_some(body)
        },
    )
    .await;
    for m in METRICS {
        let name = format!("tributary_{}", m.name);
        assert!(
            body.contains(&format!("# HELP {name}")),
            "{name} not exported:\n{body}"
        );
        assert!(
            body.contains(&format!("# TYPE {name}")),
            "{name} has no type:\n{body}"
        );
    }
    assert!(body.contains("tributary_records_in_total 200\n"), "{body}");
    assert!(
        body.contains("tributary_records_rejected_total 1\n"),
        "{body}"
    );
    assert!(body.contains("tributary_rows_out_total 199\n"), "{body}");
    assert!(body.contains("tributary_assigned_partitions 2\n"), "{body}");
    assert!(
        body.contains(&format!(
            "tributary_partition_lag{{topic=\"{}\",partition=\"0\"}} 0",
            s.topic
        )),
        "{body}"
    );
    assert!(
        !body.contains("tributary_commit_duration_seconds_count 0\n"),
        "{body}"
    );
    run.stop().await;
}
