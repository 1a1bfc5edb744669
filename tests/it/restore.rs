//! `tributary restore`: time travel that keeps exactly-once, against the real
//! broker and S3. The table goes back to an earlier version together with the
//! offsets stored at it, so the daemon replays exactly what the restore took out.

use std::collections::BTreeMap;
use std::time::Duration;

use tributary::ops::offsets::OffsetsError;
use tributary::ops::restore::{self, RestoreError, RestoreTarget};

use crate::harness::*;
use crate::ingest::{Running, start};

const PARTITIONS: i32 = 2;
const PER_WINDOW: u64 = 30;

fn merge(into: &mut BTreeMap<i32, Vec<i64>>, more: BTreeMap<i32, Vec<i64>>) {
    for (p, offsets) in more {
        into.entry(p).or_default().extend(offsets);
    }
}

/// Produce window `w` (records `w * PER_WINDOW ..`) over both partitions and
/// wait until the pipeline has committed it; the table version after it.
async fn window(
    s: &Scenario,
    run: &mut Running,
    produced: &mut BTreeMap<i32, Vec<i64>>,
    w: u64,
) -> u64 {
    let producer = producer(&s.servers.brokers);
    let records = (w * PER_WINDOW..(w + 1) * PER_WINDOW).map(|i| ((i % 2) as i32, event(i)));
    merge(produced, produce(&producer, &s.topic, records).await);
    run.committed(&s.topic, &last_offsets(produced)).await;
    s.version().await.expect("the table exists")
}

async fn verify_clean(cfg: &tributary::config::Config, rows: usize) {
    let report = tributary::ops::verify::verify(cfg, Duration::from_secs(30))
        .await
        .unwrap();
    let text = tributary::ops::verify::render(&report);
    assert!(report.clean, "{text}");
    let total: usize = report.partitions.iter().map(|p| p.rows as usize).sum();
    assert_eq!(total, rows, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_to_the_first_window_replays_exactly_the_later_ones() {
    let s = Scenario::new("restore", PARTITIONS).await;
    let cfg = s.config("[flush]\nmax_age = \"1s\"");
    let mut produced = BTreeMap::new();
    let mut run = start(cfg.clone());
    let first = window(&s, &mut run, &mut produced, 0).await;
    let at_first = s.stored_offsets(PARTITIONS).await;
    window(&s, &mut run, &mut produced, 1).await;
    let last = window(&s, &mut run, &mut produced, 2).await;
    run.stop().await;
    assert_eq!(s.rows().await.len(), 3 * PER_WINDOW as usize);
    let timeout = Duration::from_secs(10);

    // The dry run says what will happen and writes nothing.
    let plan = restore::restore(&cfg, RestoreTarget::Version(first), false, true, timeout)
        .await
        .unwrap();
    assert_eq!((plan.from_version, plan.to_version), (last, first));
    assert_eq!(plan.version, None);
    assert!(plan.files_removed >= 2, "{plan:?}");
    assert_eq!(plan.files_restored, 0, "{plan:?}");
    assert_eq!(plan.replayed, 2 * PER_WINDOW as i64, "{plan:?}");
    for m in &plan.partitions {
        let p: i32 = m.partition.rsplit_once('/').unwrap().1.parse().unwrap();
        assert_eq!(Some(m.after), at_first[&p], "{m:?}");
    }
    assert_eq!(s.version().await, Some(last), "the dry run committed");
    assert_eq!(s.rows().await.len(), 3 * PER_WINDOW as usize);

    // A version that is not earlier is refused, naming the current one.
    let err = restore::restore(&cfg, RestoreTarget::Version(last), false, false, timeout)
        .await
        .unwrap_err();
    assert!(matches!(err, RestoreError::NotEarlier { .. }), "{err}");

    let done = restore::restore(&cfg, RestoreTarget::Version(first), false, false, timeout)
        .await
        .unwrap();
    assert_eq!(done.version, Some(last + 1));
    assert_eq!(s.rows().await.len(), PER_WINDOW as usize);
    assert_eq!(s.stored_offsets(PARTITIONS).await, at_first);
    assert_eq!(s.operations().await[0], "RESTORE");

    // The daemon replays exactly windows 2 and 3.
    let mut run = start(cfg.clone());
    run.committed(&s.topic, &last_offsets(&produced)).await;
    let summary = run.stop().await;
    assert_eq!(
        (summary.records, summary.rows),
        (2 * PER_WINDOW, 2 * PER_WINDOW)
    );
    let (lost, duplicated) = diff(&s.rows().await, &produced);
    assert_eq!((lost, duplicated), (0, 0));
    verify_clean(&cfg, 3 * PER_WINDOW as usize).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_while_a_daemon_runs_needs_force_and_stays_exactly_once() {
    let s = Scenario::new("restore-live", PARTITIONS).await;
    let cfg = s.config("[flush]\nmax_age = \"1s\"");
    let mut produced = BTreeMap::new();
    let mut run = start(cfg.clone());
    let first = window(&s, &mut run, &mut produced, 0).await;
    window(&s, &mut run, &mut produced, 1).await;
    window(&s, &mut run, &mut produced, 2).await;
    let timeout = Duration::from_secs(10);

    let err = restore::restore(&cfg, RestoreTarget::Version(first), false, false, timeout)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RestoreError::Group(OffsetsError::Active { .. })),
        "{err}"
    );
    restore::restore(&cfg, RestoreTarget::Version(first), true, false, timeout)
        .await
        .unwrap();
    // The running daemon learns of the restore at its next commit: its
    // partitions' offsets moved, the commit is stale, it rewinds and replays.
    window(&s, &mut run, &mut produced, 3).await;
    run.stop().await;
    let (lost, duplicated) = diff(&s.rows().await, &produced);
    assert_eq!((lost, duplicated), (0, 0));
    verify_clean(&cfg, 4 * PER_WINDOW as usize).await;
}

/// The Python deltalake package (delta-rs' bindings, another release): a plain
/// RESTORE of the table at `argv[1]` on the S3 server `argv[2]` to `argv[3]`.
const FOREIGN_RESTORE: &str = r#"
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
t.restore(int(sys.argv[3]))
print(t.version())
"#;

/// A restore made with another engine keeps the newest offsets over older rows:
/// the daemon that sees it (at its next commit, or at start) stops with the
/// restore's version and what to run, instead of ingesting past the hole;
/// `verify` shows the hole; `tributary restore` to that version closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_by_another_engine_stops_the_daemon_until_offsets_follow() {
    let python = std::env::var("TRIBUTARY_TEST_PYTHON")
        .expect("TRIBUTARY_TEST_PYTHON is set by tests/run.sh (the interop interpreter)");
    let s = Scenario::new("restore-foreign", PARTITIONS).await;
    let producer = producer(&s.servers.brokers);
    let path = s.write_config("[flush]\nmax_age = \"500ms\"");
    let cfg = s.config("[flush]\nmax_age = \"500ms\"");
    let batch = |w: u64| (w * PER_WINDOW..(w + 1) * PER_WINDOW).map(|i| ((i % 2) as i32, event(i)));
    let mut produced = produce(&producer, &s.topic, batch(0)).await;
    let mut daemon = Daemon::start(&path, s.dir.path());
    s.wait_caught_up(&produced, PARTITIONS, Duration::from_secs(120))
        .await;
    let first = s.version().await.unwrap();
    merge(&mut produced, produce(&producer, &s.topic, batch(1)).await);
    s.wait_caught_up(&produced, PARTITIONS, Duration::from_secs(60))
        .await;

    let out = std::process::Command::new(&python)
        .args([
            "-c",
            FOREIGN_RESTORE,
            &s.table_uri(),
            &s.servers.s3,
            &first.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python deltalake: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored_at: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(s.rows().await.len(), PER_WINDOW as usize);

    // The running daemon's next commit sees it.
    merge(&mut produced, produce(&producer, &s.topic, batch(2)).await);
    let want = [
        format!("restored to version {first} by another engine"),
        format!("version {restored_at}"),
        format!("tributary restore --config FILE --to-version {first}"),
    ];
    let (status, log) = exits_within(&mut daemon, Duration::from_secs(60)).await;
    assert!(!status.success(), "{log}");
    for needle in &want {
        assert!(log.contains(needle.as_str()), "{needle}: {log}");
    }
    // Nothing was ingested past the hole; verify shows it.
    assert_eq!(s.rows().await.len(), PER_WINDOW as usize);
    let report = tributary::ops::verify::verify(&cfg, Duration::from_secs(30))
        .await
        .unwrap();
    let gaps: u64 = report.partitions.iter().map(|p| p.gaps).sum();
    assert!(!report.clean);
    assert_eq!(
        gaps,
        PER_WINDOW,
        "{}",
        tributary::ops::verify::render(&report)
    );
    let said = report.foreign_restore.unwrap_or_default();
    assert!(said.contains(want[1].as_str()), "verify: {said}");
    // status says it too.
    let status = tributary::ops::status::status(&cfg, Duration::from_secs(15))
        .await
        .unwrap();
    let said = status.foreign_restore.unwrap_or_default();
    assert!(said.contains(want[2].as_str()), "status: {said}");

    // A daemon started now finds it in the log and stops too.
    let mut again = Daemon::start(&path, s.dir.path());
    let (status, log) = exits_within(&mut again, Duration::from_secs(90)).await;
    assert!(!status.success(), "{log}");
    assert!(log.contains(want[0].as_str()), "{log}");

    // The operator's fix: the offsets of the restored version (forced: the
    // stopped daemons' memberships last until the session timeout).
    let timeout = Duration::from_secs(10);
    let fixed = restore::restore(&cfg, RestoreTarget::Version(first), true, false, timeout)
        .await
        .unwrap();
    assert_eq!(fixed.replayed, PER_WINDOW as i64, "{fixed:?}");
    let mut daemon = Daemon::start(&path, s.dir.path());
    s.wait_caught_up(&produced, PARTITIONS, Duration::from_secs(120))
        .await;
    daemon.stop_cleanly().await;
    let (lost, duplicated) = diff(&s.rows().await, &produced);
    assert_eq!((lost, duplicated), (0, 0));
    verify_clean(&cfg, 3 * PER_WINDOW as usize).await;
    let status = tributary::ops::status::status(&cfg, Duration::from_secs(15))
        .await
        .unwrap();
    assert_eq!(status.foreign_restore, None);
}
