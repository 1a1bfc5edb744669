//! Tables written by tributary, read back by engines we did not write (DuckDB's
//! delta extension, Sail through PySpark over Spark Connect, Spark itself with
//! Delta Lake's jars over S3A, and Trino's Delta Lake connector) and compared row for row with what was
//! produced: partitions, UTC timestamps, dates, decimals,
//! nested struct/array/map, after checkpoints, compaction and vacuum.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use rdkafka::producer::FutureRecord;
use serde_json::json;
use tributary::ops::maintenance::{self, Compact, VacuumOptions};

use crate::harness::*;
use crate::ingest::start;

fn record(i: u64) -> serde_json::Value {
    let countries = ["DE", "US", "BR"];
    json!({
        "id": i,
        "country": countries[(i % 3) as usize],
        "amount": if i.is_multiple_of(7) { serde_json::Value::Null } else { json!(format!("{}.{:02}", i * 13 % 10_000, i % 100)) },
        "ts": format!("2025-03-{:02}T{:02}:{:02}:{:02}.{:06}Z", 1 + i % 28, i % 24, i % 60, (i * 7) % 60, i * 31 % 1_000_000),
        "day": format!("2025-02-{:02}", 1 + i % 28),
        "score": if i.is_multiple_of(5) { serde_json::Value::Null } else { json!(i as f64 / 8.0) },
        "flag": i.is_multiple_of(2),
        "tags": if i.is_multiple_of(4) { json!([]) } else { json!([format!("t{}", i % 3), null]) },
        "attrs": if i.is_multiple_of(6) { serde_json::Value::Null } else { json!({"a": i, "b": null}) },
        "device": if i.is_multiple_of(9) { serde_json::Value::Null } else { json!({"os": "linux", "version": i % 5}) },
    })
}

/// Vacuum `t` at zero retention: every file no version references goes.
async fn vacuum_now(t: deltalake::DeltaTable) -> maintenance::VacuumReport {
    let opts = VacuumOptions {
        retention: Some(Duration::ZERO),
        force_retention: true,
        ..Default::default()
    };
    maintenance::vacuum(t, opts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_read_back_identically_by_duckdb_and_spark() {
    let python = std::env::var("TRIBUTARY_TEST_PYTHON")
        .expect("TRIBUTARY_TEST_PYTHON is set by tests/run.sh (the readers' interpreter)");
    let s = Scenario::new("readers", 2).await;
    // Records with explicit Kafka timestamps, so every column has a known value.
    let producer = producer(&s.servers.brokers);
    let mut expected = Vec::new();
    for i in 0..240u64 {
        let value = record(i).to_string();
        let key = format!("k{i}");
        let ts_ms = 1_740_000_000_000 + i as i64 * 1000 + 123;
        let (p, o) = producer
            .send(
                FutureRecord::to(&s.topic)
                    .partition((i % 2) as i32)
                    .key(&key)
                    .payload(&value)
                    .timestamp(ts_ms),
                Duration::from_secs(30),
            )
            .await
            .map(|d| (d.partition, d.offset))
            .map_err(|(e, _)| e)
            .unwrap();
        let mut row = record(i);
        row["_partition"] = json!(p);
        row["_offset"] = json!(o);
        row["_timestamp"] = json!(
            chrono::DateTime::from_timestamp_millis(ts_ms)
                .unwrap()
                .to_rfc3339()
        );
        expected.push(row);
    }
    let produced: std::collections::BTreeMap<i32, Vec<i64>> =
        expected.iter().fold(Default::default(), |mut m, r| {
            m.entry(r["_partition"].as_i64().unwrap() as i32)
                .or_insert_with(Vec::new)
                .push(r["_offset"].as_i64().unwrap());
            m
        });

    let schema =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/readers_compat.json");
    let toml = s
        .config_toml("[flush]\nmax_rows = 40\nmax_age = \"1s\"")
        .replace(&demo_schema_path().display().to_string(), &schema.display().to_string())
        .replace(
            "compression = \"zstd(1)\"",
            "compression = \"zstd(1)\"\npartition_by = [\"country\"]\n[table.properties]\n\"delta.checkpointInterval\" = \"3\"",
        );
    let cfg = parse_config(&toml);
    let mut run = start(cfg);
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await;

    // Compact, then vacuum the replaced files away.
    let t = s.table().await.unwrap();
    let compact = Compact::new(t, None);
    let plan = compact.plan().await.unwrap();
    let report = compact.execute(plan).await.unwrap();
    assert!(report.files_removed > 0, "{report:?}");
    let t = s.table().await.unwrap();
    maintenance::checkpoint(&t).await.unwrap();
    let vac = vacuum_now(t).await;
    assert_eq!(vac.files.len() as u64, report.files_removed);
    let t = s.table().await.unwrap();
    let snapshot = t.snapshot().unwrap();
    assert_eq!(
        (
            snapshot.protocol().min_reader_version(),
            snapshot.protocol().min_writer_version()
        ),
        (1, 2)
    );

    let summary = read_back(&s, &python, &expected);
    for reader in ["duckdb", "spark_sail", "spark_delta", "trino"] {
        assert_eq!(summary[reader]["rows"], 240, "{summary}");
        assert_eq!(summary[reader]["mismatches"], 0, "{summary}");
    }
}

/// DuckDB, Sail, Spark with Delta and Trino read the scenario's table; every row must be one of
/// `expected` (and all of them there). The readers' summary line.
fn read_back(s: &Scenario, python: &str, expected: &[serde_json::Value]) -> serde_json::Value {
    let expected_path = s.dir.path().join("expected.jsonl");
    let mut f = std::fs::File::create(&expected_path).unwrap();
    for r in expected {
        writeln!(f, "{r}").unwrap();
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/readers/compare.py");
    let out = Command::new(python)
        .arg(script)
        .arg(s.table_uri())
        .arg(&expected_path)
        .env("TRIBUTARY_TEST_S3_ENDPOINT", &s.servers.s3)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "readers disagree with what was produced:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap()).unwrap()
}

/// An upsert table (keyed by the Kafka key) after inserts, updates, deletes and
/// a key deleted and re-inserted, then compacted, checkpointed and vacuumed:
/// `status` shows no lag, and every reader finds exactly the last change of
/// every key still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserted_tables_read_back_exactly_by_duckdb_and_spark() {
    upserted_table_read_back("readers-upsert", "").await;
}

/// The same table written merge-on-read: every reader reads it exactly with
/// its deletion vectors, and again after compaction and vacuum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_on_read_tables_read_back_exactly_by_duckdb_sail_spark_and_trino() {
    upserted_table_read_back("readers-mor", "\nupsert_strategy = \"merge-on-read\"").await;
}

/// The upsert readers scenario on a table with `strategy` lines.
async fn upserted_table_read_back(name: &str, strategy: &str) {
    let python = std::env::var("TRIBUTARY_TEST_PYTHON")
        .expect("TRIBUTARY_TEST_PYTHON is set by tests/run.sh (the readers' interpreter)");
    let s = Scenario::new(name, 2).await;
    let schema =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/readers_compat.json");
    let toml = s
        .config_toml("[flush]\nmax_rows = 40\nmax_age = \"1s\"")
        .replace(&demo_schema_path().display().to_string(), &schema.display().to_string())
        .replace(
            "compression = \"zstd(1)\"",
            &format!("compression = \"zstd(1)\"\nmode = \"upsert\"\nkey = [\"_key\"]\npartition_by = [\"country\"]{strategy}\n[table.properties]\n\"delta.checkpointInterval\" = \"3\""),
        );
    let mut run = start(parse_config(&toml));
    let producer = producer(&s.servers.brokers);
    // key -> the row the table must end with (None: deleted).
    let mut last: std::collections::BTreeMap<u64, Option<serde_json::Value>> = Default::default();
    let mut produced: std::collections::BTreeMap<i32, Vec<i64>> = Default::default();
    let inserts = (0..120u64).map(|i| (i, Some(record(i))));
    let updates = (0..120u64).filter(|i| i % 4 == 0).map(|i| {
        let mut r = record(i);
        r["day"] = json!("2025-02-28");
        r["flag"] = json!(i % 8 == 0);
        (i, Some(r))
    });
    let deletes = (0..120u64).filter(|i| i % 10 == 5).map(|i| (i, None));
    let back = [(15u64, Some(record(15)))];
    for (i, value) in inserts.chain(updates).chain(deletes).chain(back) {
        let key = format!("k{i}");
        let payload = value.as_ref().map(|v| v.to_string());
        let mut r = FutureRecord::to(&s.topic)
            .partition((i % 2) as i32)
            .key(&key);
        if let Some(p) = &payload {
            r = r.payload(p);
        }
        let d = producer
            .send(r, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        produced.entry(d.partition).or_default().push(d.offset);
        last.insert(
            i,
            value.map(|mut row| {
                row["_partition"] = json!(d.partition);
                row["_offset"] = json!(d.offset);
                row["_timestamp"] = json!("2025-01-01T00:00:00Z"); // only its presence is compared
                row
            }),
        );
    }
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await;
    let expected: Vec<serde_json::Value> = last.into_values().flatten().collect();
    assert_eq!(expected.len(), 120 - 12 + 1);
    let t = s.table().await.unwrap();
    let vectors = t
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .filter(|f| f.deletion_vector_descriptor().is_some())
        .count();
    if strategy.is_empty() {
        assert_eq!(vectors, 0, "copy-on-write writes no deletion vector");
    } else {
        assert!(vectors > 0, "merge-on-read deleted rows by vectors");
        let summary = read_back(&s, &python, &expected);
        check_readers(&summary, expected.len());
    }
    let compact = Compact::new(t, None);
    let plan = compact.plan().await.unwrap();
    compact.execute(plan).await.unwrap();
    maintenance::checkpoint(&s.table().await.unwrap())
        .await
        .unwrap();
    // Vacuum takes away every file the MERGEs and the compaction replaced.
    let live_files = |t: deltalake::DeltaTable| t.snapshot().unwrap().log_data().num_files();
    let live = live_files(s.table().await.unwrap());
    let vac = vacuum_now(s.table().await.unwrap()).await;
    assert!(!vac.files.is_empty(), "{vac:?}");
    let after = live_files(s.table().await.unwrap());
    assert_eq!(after, live, "vacuum removes no live file");
    // status reads an upsert table's stored offsets like an append table's.
    let status = tributary::ops::status::status(&parse_config(&toml), Duration::from_secs(20))
        .await
        .unwrap();
    let stored: std::collections::BTreeMap<i32, Option<i64>> = status
        .partitions
        .iter()
        .map(|p| (p.partition, p.stored_offset))
        .collect();
    assert_eq!(stored, last_offsets(&produced));
    assert_eq!(status.total_lag, 0);

    let summary = read_back(&s, &python, &expected);
    check_readers(&summary, expected.len());
}

/// Every reader read `rows` rows and none differs from what was produced.
fn check_readers(summary: &serde_json::Value, rows: usize) {
    for reader in ["duckdb", "spark_sail", "spark_delta", "trino"] {
        assert_eq!(summary[reader]["rows"], rows, "{summary}");
        assert_eq!(summary[reader]["mismatches"], 0, "{summary}");
    }
}
