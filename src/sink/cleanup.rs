//! Expired-log cleanup that reads only what has expired.
//!
//! delta-rs' `cleanup_metadata` lists the whole `_delta_log` to decide what to
//! delete. A table that keeps 30 days of log (the default retention) at a commit
//! every few seconds holds hundreds of thousands of log files, so every cleanup
//! read hundreds of LIST pages and held every entry in memory, and the cost grew
//! with the log. The rule here is delta-rs' own (delete the log files below the
//! newest checkpoint at or before the oldest version still in retention, when they
//! are older than the cutoff), but object stores that list keys in order (S3, GCS,
//! Azure, memory: version order for the zero-padded names) are read as a stream
//! that stops at the first commit still in retention. A cleanup then costs the
//! expired files plus one page, however long the retained log is. Stores that do
//! not list in order (the local file system) keep delta-rs' full listing.

use deltalake::table::config::TablePropertiesExt as _;
use deltalake::{DeltaTable, DeltaTableError, Path};
use futures::{StreamExt, TryStreamExt};

/// What a `_delta_log` file is, for cleanup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Commit,
    Checkpoint,
}

/// The version and kind of a log file named `<20 digits>.json` or
/// `<20 digits>.checkpoint[.<part>.<parts>].parquet`; other files (`_last_checkpoint`,
/// `.crc`, temporary files) are never deleted.
fn parse(location: &str) -> Option<(u64, Kind)> {
    let name = location.rsplit('/').next()?;
    let (digits, rest) = name.split_at_checked(20)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let version = digits.parse().ok()?;
    if rest == ".json" {
        return Some((version, Kind::Commit));
    }
    let parts = rest.strip_prefix(".checkpoint")?.strip_suffix(".parquet")?;
    let single = parts.is_empty();
    let multi = parts.strip_prefix('.').is_some_and(|p| {
        p.split('.')
            .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    (single || multi).then_some((version, Kind::Checkpoint))
}

/// The cleanup decision, fed the listing in key order.
#[derive(Debug)]
pub struct Plan {
    keep: u64,
    cutoff_ms: i64,
    seen: Vec<(u64, i64, Path)>,
    safe: Option<u64>,
}

impl Plan {
    /// Keep at least everything from version `keep` (the checkpoint just written)
    /// and every file modified after `cutoff_ms`.
    pub fn new(keep: u64, cutoff_ms: i64) -> Self {
        Self {
            keep,
            cutoff_ms,
            seen: Vec::new(),
            safe: None,
        }
    }

    /// Take the next listed file. False once every later file is to be kept: a
    /// version above `keep`, or a commit still in retention (the versions after it
    /// are as recent or more).
    pub fn take(&mut self, location: Path, modified_ms: i64) -> bool {
        let Some((version, kind)) = parse(location.as_ref()) else {
            return true;
        };
        if version > self.keep || (kind == Kind::Commit && modified_ms > self.cutoff_ms) {
            return false;
        }
        if kind == Kind::Checkpoint {
            self.safe = Some(self.safe.map_or(version, |s| s.max(version)));
        }
        self.seen.push((version, modified_ms, location));
        true
    }

    /// The files to delete: below the newest checkpoint seen, and not modified
    /// after the cutoff.
    pub fn deletions(self) -> Vec<Path> {
        let Some(safe) = self.safe else {
            return Vec::new();
        };
        let cutoff = self.cutoff_ms;
        self.seen
            .into_iter()
            .filter(|(v, ts, _)| *v < safe && *ts <= cutoff)
            .map(|(_, _, p)| p)
            .collect()
    }
}

/// Delete the log files of `table` that expired (its `logRetentionDuration`)
/// before its current version, which has a checkpoint. Returns how many.
pub async fn expired(table: &DeltaTable) -> Result<usize, DeltaTableError> {
    if !lists_in_order(table.table_url().scheme()) {
        return deltalake::checkpoints::cleanup_metadata(table, None).await;
    }
    let snapshot = table.snapshot()?;
    let retention = snapshot.table_config().log_retention_duration();
    let cutoff_ms = chrono::Utc::now().timestamp_millis() - retention.as_millis() as i64;
    let log_store = table.log_store();
    let store = log_store.object_store(None);
    let mut plan = Plan::new(snapshot.version(), cutoff_ms);
    let mut listing = store.list(Some(log_store.log_path()));
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        if !plan.take(meta.location, meta.last_modified.timestamp_millis()) {
            break;
        }
    }
    drop(listing);
    let doomed = plan.deletions();
    if doomed.is_empty() {
        return Ok(0);
    }
    let deleted = store
        .delete_stream(futures::stream::iter(doomed.into_iter().map(Ok)).boxed())
        .try_collect::<Vec<_>>()
        .await?;
    Ok(deleted.len())
}

/// Whether the store behind `scheme` lists keys in lexicographic order.
fn lists_in_order(scheme: &str) -> bool {
    matches!(
        scheme,
        "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss" | "memory"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(v: u64, suffix: &str) -> Path {
        Path::from(format!("t/_delta_log/{v:020}{suffix}"))
    }

    /// Feed `files` (version, suffix, modified) in key order; (deleted versions
    /// and suffixes, files read before the listing stopped).
    fn run(keep: u64, cutoff: i64, files: &[(u64, &str, i64)]) -> (Vec<String>, usize) {
        let mut plan = Plan::new(keep, cutoff);
        let mut read = 0;
        for (v, suffix, ts) in files {
            read += 1;
            if !plan.take(at(*v, suffix), *ts) {
                break;
            }
        }
        let gone = plan
            .deletions()
            .iter()
            .map(|p| p.filename().unwrap_or_default().to_owned())
            .collect();
        (gone, read)
    }

    #[test]
    fn names_are_parsed_like_delta_rs_and_nothing_else_is_touched() {
        assert_eq!(
            parse("x/_delta_log/00000000000000000012.json"),
            Some((12, Kind::Commit))
        );
        assert_eq!(
            parse("_delta_log/00000000000000000010.checkpoint.parquet"),
            Some((10, Kind::Checkpoint))
        );
        assert_eq!(
            parse("_delta_log/00000000000000000010.checkpoint.0000000001.0000000002.parquet"),
            Some((10, Kind::Checkpoint))
        );
        for other in [
            "_delta_log/_last_checkpoint",
            "_delta_log/00000000000000000010.crc",
            "_delta_log/00000000000000000010.json.tmp",
            "_delta_log/.00000000000000000010.json.swp",
            "_delta_log/_commits/00000000000000000011.uuid.json",
            "_delta_log/0000000000000000001x.json",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    #[test]
    fn a_fresh_log_is_read_one_file_deep_whatever_its_length() {
        // 100,000 versions all in retention: the first commit stops the listing.
        let files: Vec<(u64, &str, i64)> = (0..100_000).map(|v| (v, ".json", 1_000)).collect();
        let (gone, read) = run(99_999, 500, &files);
        assert!(gone.is_empty());
        assert_eq!(read, 1);
    }

    #[test]
    fn expired_files_below_the_newest_safe_checkpoint_go_and_the_rest_stay() {
        // Versions 0..=29 expired (ts 10), 30.. in retention (ts 900); checkpoints
        // at 10, 20 and 30. As in delta-rs, the oldest retained version is 30, and
        // its checkpoint (listed before 30.json) is the newest at or before it: every
        // expired file below 30 goes, checkpoints 10 and 20 included.
        let mut files = Vec::new();
        for v in 0..40u64 {
            let ts = if v < 30 { 10 } else { 900 };
            if v % 10 == 0 && v > 0 {
                files.push((v, ".checkpoint.parquet", ts));
            }
            files.push((v, ".json", ts));
        }
        let (gone, read) = run(39, 100, &files);
        let want: Vec<String> = files
            .iter()
            .filter(|(v, _, _)| *v < 30)
            .map(|(v, suffix, _)| format!("{v:020}{suffix}"))
            .collect();
        assert_eq!(gone, want);
        assert_eq!(
            read,
            30 + 2 + 2,
            "stopped at 30.json, the first retained commit"
        );
    }

    #[test]
    fn nothing_goes_without_a_checkpoint_and_nothing_above_keep_is_read() {
        let files: Vec<(u64, &str, i64)> = (0..10).map(|v| (v, ".json", 10)).collect();
        assert_eq!(run(9, 100, &files), (Vec::new(), 10));
        let files = [
            (0, ".json", 10),
            (5, ".checkpoint.parquet", 10),
            (6, ".json", 10),
        ];
        let (gone, read) = run(4, 100, &files);
        assert!(gone.is_empty(), "the checkpoint at 5 is above keep (4)");
        assert_eq!(read, 2);
    }
}
