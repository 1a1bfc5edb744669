//! Operator commands on real tables: compact while ingesting, vacuum's guards and
//! orphan removal, status lag, offsets reset + verify.

use std::sync::Arc;
use std::time::Duration;

use deltalake::logstore::object_store::ObjectStoreExt as _;
use deltalake::writer::DeltaWriter;
use tributary::ops::maintenance::{self, Compact, MaintenanceError, VacuumOptions};
use tributary::ops::offsets::{self, OffsetsError, Target};
use tributary::record::TopicPartition;

use crate::harness::*;
use crate::ingest::start;

#[derive(Debug)]
struct FixedClock(i64);

impl deltalake::operations::vacuum::Clock for FixedClock {
    fn current_timestamp_millis(&self) -> i64 {
        self.0
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn file_count(s: &Scenario) -> u64 {
    let t = s.table().await.unwrap();
    maintenance::file_summary(&t, 1 << 30).await.unwrap().files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_while_ingesting_loses_nothing() {
    let s = Scenario::new("compact", 2).await;
    let mut run = start(s.config("[flush]\nmax_rows = 100\nmax_age = \"200ms\""));
    let producer = BackgroundProducer::start(&s.servers.brokers, &s.topic, 2, 3000, 50);
    eventually(
        Duration::from_secs(90),
        "at least 8 small files",
        || async { (s.table().await.is_some() && file_count(&s).await >= 8).then_some(()) },
    )
    .await;

    // Dry run: a plan, and nothing written.
    let t = s.table().await.unwrap();
    let version = t.version();
    let plan = Compact::new(t.clone(), None).plan().await.unwrap();
    assert!(
        plan.files_in >= 8 && plan.files_out_estimate >= 1,
        "{plan:?}"
    );
    let t2 = s.table().await.unwrap();
    assert!(t2.version() >= version);
    assert!(
        !s.operations().await.iter().any(|o| o == "OPTIMIZE"),
        "dry run wrote nothing"
    );

    // The real thing, while the pipeline keeps committing.
    let compact = Compact::new(s.table().await.unwrap(), None);
    let plan = compact.plan().await.unwrap();
    let report = compact.execute(plan).await.unwrap();
    assert!(report.files_removed >= 8, "{report:?}");
    assert!(report.files_added < report.files_removed, "{report:?}");
    assert!(s.operations().await.iter().any(|o| o == "OPTIMIZE"));

    let produced = producer.finish().await;
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await;
    let rows = s.rows().await;
    assert_eq!(diff(&rows, &produced), (0, 0));
    assert_eq!(rows.len(), 3000);
}

/// Upload a data file the way a writer does before its commit, and never commit it:
/// what a writer killed between upload and commit leaves behind.
async fn orphan_file(t: &deltalake::DeltaTable) -> String {
    let mut w = tributary::sink::table::new_writer(t, Default::default(), 1 << 30).unwrap();
    let mut d = tributary::decode::JsonDecoder::new(
        tributary::schema::TableSchema::from_table(
            t.snapshot().unwrap().schema().as_ref(),
            &tributary::config::MetadataColumns {
                topic: Some("_topic".into()),
                partition: Some("_partition".into()),
                offset: Some("_offset".into()),
                timestamp: Some("_timestamp".into()),
                key: Some("_key".into()),
                headers: Some("_headers".into()),
            },
            &[],
        )
        .unwrap(),
        16,
    )
    .unwrap();
    let chunk = tributary::record::RecordChunk::from_values(
        &TopicPartition::new("orphan", 0),
        0,
        [event(1).as_bytes()],
    );
    w.write(d.decode(&chunk, |_| true).unwrap().batch.unwrap())
        .await
        .unwrap();
    let adds = w.flush().await.unwrap();
    assert_eq!(adds.len(), 1);
    adds[0].path.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_guards_retention_and_removes_only_old_unreferenced_files() {
    let s = Scenario::new("vacuum", 1).await;
    let producer = producer(&s.servers.brokers);
    let produced = produce(&producer, &s.topic, (0..300u64).map(|i| (0, event(i)))).await;
    let mut run = start(s.config("[flush]\nmax_rows = 50\nmax_age = \"1s\""));
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await;
    let t = s.table().await.unwrap();
    let orphan = orphan_file(&t).await;
    let report = Compact::new(t, None)
        .execute(
            Compact::new(s.table().await.unwrap(), None)
                .plan()
                .await
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(report.files_removed >= 6, "{report:?}");
    let t = s.table().await.unwrap();
    let store = t.object_store();
    let exists = |p: String| {
        let store = store.clone();
        async move { store.head(&deltalake::Path::from(p)).await.is_ok() }
    };

    // Below the table's 7-day retention: refused.
    let err = maintenance::vacuum(
        t.clone(),
        VacuumOptions {
            retention: Some(Duration::from_secs(3600)),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            MaintenanceError::RetentionTooShort {
                table_hours: 168,
                ..
            }
        ),
        "{err}"
    );

    // Now: the removed files and the orphan are younger than the retention.
    let now = VacuumOptions {
        full: true,
        clock: Some(Arc::new(FixedClock(now_ms()))),
        ..Default::default()
    };
    assert!(
        maintenance::vacuum(t.clone(), now)
            .await
            .unwrap()
            .files
            .is_empty()
    );

    // Eight days later, dry run: lists the compacted-away files, deletes nothing.
    let later = || {
        Some(Arc::new(FixedClock(now_ms() + 8 * 86_400_000))
            as Arc<dyn deltalake::operations::vacuum::Clock>)
    };
    let dry = maintenance::vacuum(
        t.clone(),
        VacuumOptions {
            dry_run: true,
            clock: later(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.files.len() as u64, report.files_removed, "{dry:?}");
    assert!(
        !dry.files.iter().any(|f| f.contains(&orphan)),
        "lite mode leaves orphans alone"
    );
    for f in &dry.files {
        assert!(exists(f.clone()).await, "dry run deleted {f}");
    }

    // Full mode: the compacted-away files and the orphan go; active files stay.
    let full = maintenance::vacuum(
        t.clone(),
        VacuumOptions {
            full: true,
            clock: later(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        full.files.iter().any(|f| f.ends_with(&orphan)),
        "orphan removed: {full:?}"
    );
    assert_eq!(
        full.files.len() as u64,
        report.files_removed + 1,
        "{full:?}"
    );
    assert!(!exists(orphan).await);
    let rows = s.rows().await;
    assert_eq!(diff(&rows, &produced), (0, 0));
    assert_eq!(rows.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lag_is_high_watermark_minus_next_offset() {
    status_lag(Scenario::new("status", 2).await).await;
}

/// Tansu answers ListOffsets "latest" wrongly; status reads the high
/// watermark from fetch responses, so its lag is right there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lag_is_right_on_a_broker_that_answers_list_offsets_wrongly() {
    status_lag(Scenario::on_tansu("status-tansu", 2).await).await;
}

async fn status_lag(s: Scenario) {
    let producer = producer(&s.servers.brokers);
    let mut records: Vec<(i32, String)> = (0..100u64).map(|i| (0, event(i))).collect();
    records.extend((0..50u64).map(|i| (1, event(i))));
    let produced = produce(&producer, &s.topic, records).await;
    let mut run = start(s.config("[flush]\nmax_age = \"1s\""));
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await;
    produce(&producer, &s.topic, (0..30u64).map(|i| (0, event(i)))).await;

    let report = tributary::ops::status::status(&s.config(""), Duration::from_secs(20))
        .await
        .unwrap();
    let p: Vec<(Option<i64>, i64, i64)> = report
        .partitions
        .iter()
        .map(|p| (p.stored_offset, p.high_watermark, p.lag))
        .collect();
    assert_eq!(p, vec![(Some(99), 130, 30), (Some(49), 50, 0)]);
    assert_eq!(report.total_lag, 30);
    assert!(report.partitions.iter().all(|p| p.last_commit_ms.is_some()));
    assert!(report.files.files >= 1 && report.version >= 1);
    let text = tributary::ops::status::render(&report);
    assert!(text.contains("total lag    30 records"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_reset_replays_exactly_the_range_and_verify_sees_it() {
    let s = Scenario::new("offsets", 1).await;
    let producer = producer(&s.servers.brokers);
    let mut payloads: Vec<(i32, String)> = (0..100u64).map(|i| (0, event(i))).collect();
    payloads[10].1 = "not json".into(); // a rejected record is not a gap
    let produced = produce(&producer, &s.topic, payloads).await;
    let cfg = s.config("[flush]\nmax_age = \"1s\"");
    let mut run = start(cfg.clone());
    run.committed(&s.topic, &last_offsets(&produced)).await;

    // Refused while the daemon holds the group.
    let err = offsets::set(
        &cfg,
        &[],
        Target::Offset(60),
        false,
        false,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, OffsetsError::Active { .. }), "{err}");
    run.stop().await;

    let clean = tributary::ops::verify::verify(&cfg, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(clean.clean, "{}", tributary::ops::verify::render(&clean));
    assert_eq!(
        (clean.partitions[0].rows, clean.partitions[0].rejected),
        (99, 1)
    );

    let tp = TopicPartition::new(s.topic.as_str(), 0);
    let moved = offsets::set(
        &cfg,
        std::slice::from_ref(&tp),
        Target::Offset(60),
        false,
        false,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(
        (moved.changes[0].before, moved.changes[0].after),
        (Some(99), 59)
    );
    assert_eq!(s.stored_offsets(1).await[&0], Some(59));

    let mut run = start(cfg.clone());
    run.committed(&s.topic, &last_offsets(&produced)).await;
    let summary = run.stop().await;
    assert_eq!(
        (summary.records, summary.rows),
        (40, 40),
        "replayed exactly offsets 60..=99"
    );

    let dup = tributary::ops::verify::verify(&cfg, Duration::from_secs(30))
        .await
        .unwrap();
    let p = &dup.partitions[0];
    assert!(!dup.clean);
    assert_eq!((p.rows, p.duplicates, p.gaps), (139, 40, 0));
    assert_eq!(p.duplicate_sample.first(), Some(&60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_checkpoints_on_the_table_interval() {
    let s = Scenario::new("checkpoint", 1).await;
    let producer = producer(&s.servers.brokers);
    let produced = produce(&producer, &s.topic, (0..500u64).map(|i| (0, event(i)))).await;
    let cfg = s.config(
        "[table.properties]\n\"delta.checkpointInterval\" = \"3\"\n[flush]\nmax_rows = 100\nmax_age = \"1s\"",
    );
    let mut run = start(cfg);
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await;
    let t = s.table().await.unwrap();
    assert!(t.version().unwrap() >= 5);
    let store = t.object_store();
    let last: serde_json::Value = serde_json::from_slice(
        &store
            .get(&deltalake::Path::from("_delta_log/_last_checkpoint"))
            .await
            .expect("_last_checkpoint written by the daemon")
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    // With the default interval (100) there would be no checkpoint at all yet.
    let version = last["version"].as_i64().unwrap();
    assert!(
        version >= 3 && version <= t.version().unwrap() as i64,
        "checkpoint at {version}"
    );
    // A fresh reader starts from the checkpoint and still sees every row.
    assert_eq!(diff(&s.rows().await, &produced), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_reset_to_timestamp_replays_from_that_time() {
    reset_to_timestamp(Scenario::new("offsets-ts", 1).await).await;
}

/// Tansu answers offsets-for-times wrongly; the answer is checked against the
/// records around it (and the partition scanned when it is wrong).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_reset_to_timestamp_is_right_on_a_broker_that_answers_it_wrongly() {
    reset_to_timestamp(Scenario::on_tansu("offsets-ts-tansu", 1).await).await;
}

async fn reset_to_timestamp(s: Scenario) {
    let producer = producer(&s.servers.brokers);
    let base = 1_750_000_000_000i64;
    let mut last = -1;
    for i in 0..100u64 {
        let value = event(i);
        let d = producer
            .send(
                rdkafka::producer::FutureRecord::<str, str>::to(&s.topic)
                    .partition(0)
                    .payload(&value)
                    .timestamp(base + i as i64 * 1000),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        last = d.offset;
    }
    let cfg = s.config("[flush]\nmax_age = \"1s\"");
    let mut run = start(cfg.clone());
    let done: std::collections::BTreeMap<i32, Option<i64>> = [(0, Some(last))].into();
    run.committed(&s.topic, &done).await;
    run.stop().await;

    // Records 70..99 have timestamps at or after base + 70 s.
    let moved = offsets::set(
        &cfg,
        &[],
        Target::Timestamp(base + 70_000),
        false,
        false,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(moved.changes[0].after, last - 30, "{moved:?}");
    let mut run = start(cfg.clone());
    run.committed(&s.topic, &done).await;
    let summary = run.stop().await;
    assert_eq!(summary.records, 30);
}
