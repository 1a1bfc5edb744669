//! The upsert scenario (`--upsert KEYS`): a table of KEYS rows is loaded first
//! (an append daemon over KEYS keyed records: an initial snapshot), then
//! `--records` changes are produced over it, skewed (80% of the changes on 5%
//! of the keys) with 5% deletes (tombstones), and the daemons apply them in
//! upsert mode, keyed by the Kafka key (and, with `--owned`, partitioned by the
//! Kafka partition, which is then part of the key).
//!
//! Write amplification: the Parquet bytes the upsert commits wrote, per byte of
//! change ingested; read from the table's log (`add` sizes of every commit after
//! the load).

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::events;
use crate::kafka::Targets;
use crate::send;

/// Share of changes on the hot keys, and the hot keys' share of all keys, in %.
const HOT_CHANGES: u64 = 80;
const HOT_KEYS: u64 = 5;
/// Share of changes that delete their key, in %.
const DELETES: u64 = 5;

/// A 64-bit mix (splitmix64): the change stream is the same on every run.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Change `j` over `keys` keys: (its key, whether it deletes it).
pub fn change(j: u64, keys: u64) -> (u64, bool) {
    let r = mix(j);
    let hot = (keys * HOT_KEYS / 100).max(1);
    let key = if r % 100 < HOT_CHANGES {
        mix(r) % hot
    } else {
        mix(r ^ 1) % keys
    };
    (key, mix(r ^ 2) % 100 < DELETES)
}

/// The producer of keyed records: key `k` always goes to partition
/// `k % partitions`, as a key-hashing producer keeps a key in one partition.
pub struct Keyed {
    producer: ThreadedProducer<DefaultProducerContext>,
    json: String,
    pub bytes: u64,
}

impl Keyed {
    pub fn new(brokers: &str) -> anyhow::Result<Self> {
        Ok(Self {
            producer: crate::kafka::producer(brokers)?,
            json: String::with_capacity(320),
            bytes: 0,
        })
    }

    fn send(&mut self, t: &Targets, key: u64, value: Option<u64>) -> anyhow::Result<()> {
        let k = key.to_string();
        let partition = (key % t.partitions as u64) as i32;
        let mut record = BaseRecord::<str, [u8]>::to(&t.topics[0])
            .partition(partition)
            .key(&k);
        if let Some(v) = value {
            events::json(v, &mut self.json);
            record = record.payload(self.json.as_bytes());
        }
        self.bytes += value.map_or(0, |_| self.json.len() as u64) + k.len() as u64;
        send::send_waiting(&self.producer, record)?;
        Ok(())
    }

    /// One record per key `0..keys` (the row: event `key`).
    pub fn load(&mut self, t: &Targets, keys: u64) -> anyhow::Result<()> {
        for k in 0..keys {
            self.send(t, k, Some(k))?;
        }
        self.producer.flush(Duration::from_secs(600))?;
        Ok(())
    }

    /// `n` changes over `keys` keys (change `j` carries event `keys + j`, or is
    /// a tombstone); returns the bytes produced.
    pub fn changes(&mut self, t: &Targets, keys: u64, n: u64) -> anyhow::Result<u64> {
        let before = self.bytes;
        for j in 0..n {
            let (key, delete) = change(j, keys);
            self.send(t, key, (!delete).then_some(keys + j))?;
        }
        self.producer.flush(Duration::from_secs(600))?;
        Ok(self.bytes - before)
    }
}

/// The `[table]` lines of the upsert scenario: the Kafka key (and partition)
/// stored; in upsert mode keyed by them.
pub fn table_lines(owned: bool, upsert: bool, on_read: bool) -> String {
    let mut lines = String::new();
    if on_read && upsert {
        // The load is an append table; the upsert daemon upgrades the table
        // when it opens it.
        lines.push_str("upsert_strategy = \"merge-on-read\"\n");
    }
    if upsert {
        lines.push_str("mode = \"upsert\"\n");
        if owned {
            lines.push_str("key = [\"_partition\", \"_key\"]\n");
        }
    }
    if owned {
        lines.push_str("partition_by = [\"_partition\"]\n");
    }
    lines.push_str("\n[table.metadata_columns]\nkey = \"_key\"\npartition = \"_partition\"\n");
    lines
}

/// What the upsert commits wrote, from the table's log after `from`.
#[derive(Debug, Default)]
pub struct Written {
    pub commits: u64,
    pub added_bytes: u64,
    pub removed_bytes: u64,
    pub files_added: u64,
    pub table_bytes: u64,
    /// Deletion-vector bytes the commits wrote (merge-on-read).
    pub dv_bytes: u64,
    /// Files given a deletion vector (a `remove` + `add` of the same path: no
    /// data written).
    pub files_with_vectors: u64,
}

/// Sum the `add` and `remove` sizes of the commits after version `from`.
pub async fn written(config_text: &str, from: u64) -> anyhow::Result<Written> {
    let cfg = tributary::config::RawConfig::parse(config_text, None, &|_| None)?.validate()?;
    let table = tributary::sink::table::load(&cfg.table.uri, &cfg.storage)
        .await?
        .context("the table exists after the run")?;
    let last = table.version().context("a loaded table has a version")?;
    let mut w = Written::default();
    let store = table.log_store();
    for v in (from + 1)..=last {
        let Some(bytes) = store.read_commit_entry(v).await? else {
            continue;
        };
        w.commits += 1;
        let actions = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(serde_json::from_slice::<serde_json::Value>)
            .collect::<Result<Vec<_>, _>>()?;
        // A file given a deletion vector is removed and added again under its
        // own path: neither is data written.
        let removed: std::collections::HashSet<&str> = actions
            .iter()
            .filter_map(|a| a.get("remove")?["path"].as_str())
            .collect();
        let revectored: std::collections::HashSet<&str> = actions
            .iter()
            .filter_map(|a| a.get("add"))
            .filter(|add| add["deletionVector"].is_object())
            .filter_map(|add| add["path"].as_str())
            .filter(|p| removed.contains(p))
            .collect();
        for a in &actions {
            if let Some(add) = a.get("add") {
                if revectored.contains(add["path"].as_str().unwrap_or_default()) {
                    w.files_with_vectors += 1;
                    w.dv_bytes += add["deletionVector"]["sizeInBytes"].as_u64().unwrap_or(0);
                } else {
                    w.added_bytes += add["size"].as_u64().unwrap_or(0);
                    w.files_added += 1;
                }
            }
            if let Some(rm) = a.get("remove")
                && !revectored.contains(rm["path"].as_str().unwrap_or_default())
            {
                w.removed_bytes += rm["size"].as_u64().unwrap_or(0);
            }
        }
    }
    let summary = tributary::ops::maintenance::file_summary(&table, u64::MAX).await?;
    w.table_bytes = summary.bytes;
    Ok(w)
}

/// What the MERGEs did, summed from the daemons' "merged" log lines: rows
/// inserted, updated, deleted, copied (rewritten unchanged), files scanned,
/// and milliseconds in all, scanning and rewriting.
pub fn merged(lines: &[serde_json::Value]) -> [u64; 8] {
    let mut sums = [0u64; 8];
    for l in lines {
        let f = &l["fields"];
        if f["message"].as_str() != Some("merged") {
            continue;
        }
        let keys = [
            "inserted",
            "updated",
            "deleted",
            "copied",
            "files_scanned",
            "ms",
            "scan_ms",
            "rewrite_ms",
        ];
        for (i, k) in keys.iter().enumerate() {
            sums[i] += f[*k].as_u64().unwrap_or(0);
        }
    }
    sums
}

/// What the merge-on-read commits did, summed from the daemons' "merged on
/// read" log lines: rows deleted by vectors, rows written, files given a
/// vector, and milliseconds in all and in finding and writing.
pub fn merged_on_read(lines: &[serde_json::Value]) -> Option<[u64; 5]> {
    let mut sums = [0u64; 5];
    let mut any = false;
    for l in lines {
        let f = &l["fields"];
        if f["message"].as_str() != Some("merged on read") {
            continue;
        }
        any = true;
        let keys = [
            "rows_deleted",
            "rows_written",
            "files_with_vectors",
            "ms",
            "apply_ms",
        ];
        for (i, k) in keys.iter().enumerate() {
            sums[i] += f[*k].as_u64().unwrap_or(0);
        }
    }
    any.then_some(sums)
}

/// The report's upsert lines.
pub fn render(w: &Written, change_bytes: u64, m: [u64; 8], on_read: Option<[u64; 5]>) -> String {
    let mb = |b: u64| b as f64 / 1e6;
    let rows = match on_read {
        Some(r) => format!(
            "on read       {} rows deleted by deletion vectors in {} files, {} rows written \
             in new files; {:.1} MB of deletion vectors\n\
             merge time    {:.1} s in merge-on-read commits ({:.1} s locating keys and writing)\n",
            r[0],
            w.files_with_vectors,
            r[1],
            mb(w.dv_bytes),
            r[3] as f64 / 1e3,
            r[4] as f64 / 1e3
        ),
        None => format!(
            "merged rows   {} inserted, {} updated, {} deleted, {} copied unchanged into rewritten \
         files; {} files scanned\n\
         merge time    {:.1} s in MERGE (delta-rs' own count: {:.1} s scanning, {:.1} s rewriting)\n",
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5] as f64 / 1e3,
            m[6] as f64 / 1e3,
            m[7] as f64 / 1e3
        ),
    };
    rows + &format!(
        "upsert        {} commits wrote {:.1} MB of Parquet in {} files and removed {:.1} MB; \
         the table is {:.1} MB\n\
         write amp.    {:.1}x (Parquet and deletion-vector bytes written per byte of change ingested, \
         {:.1} MB of changes)\n",
        w.commits,
        mb(w.added_bytes),
        w.files_added,
        mb(w.removed_bytes),
        mb(w.table_bytes),
        (w.added_bytes + w.dv_bytes) as f64 / change_bytes.max(1) as f64,
        mb(change_bytes)
    )
}

/// The load phase: produce a row per key, run one append daemon until they
/// are all committed; returns the table version after the load.
pub async fn load(
    args: &crate::args::Args,
    targets: &Targets,
    keys: u64,
    start: impl Fn() -> anyhow::Result<Vec<crate::daemons::Daemon>>,
    config_text: &str,
) -> anyhow::Result<u64> {
    let t = Instant::now();
    let (t2, brokers) = (targets.clone(), args.brokers.clone());
    let bytes = tokio::task::spawn_blocking(move || {
        let mut p = Keyed::new(&brokers)?;
        p.load(&t2, keys).map(|()| p.bytes)
    })
    .await??;
    eprintln!(
        "bench: loaded {keys} keys ({:.1} MB) into Kafka in {:.1}s",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let mut group = start()?;
    crate::daemons::watch(&mut group, Duration::from_secs(3600), |s| {
        s.rows >= keys as f64
    })?;
    for d in &mut group {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &d.child.id().to_string()])
            .status();
        let _ = d.child.wait();
    }
    let cfg = tributary::config::RawConfig::parse(config_text, None, &|_| None)?.validate()?;
    let table = tributary::sink::table::load(&cfg.table.uri, &cfg.storage)
        .await?
        .context("the loaded table exists")?;
    let version = table.version().context("a loaded table has a version")?;
    eprintln!(
        "bench: table of {keys} rows written by an append daemon in {:.1}s (version {version})",
        t.elapsed().as_secs_f64()
    );
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_skewed_and_some_delete() {
        let keys = 100_000;
        let n = 200_000;
        let (mut hot, mut deletes) = (0u64, 0u64);
        for j in 0..n {
            let (k, d) = change(j, keys);
            assert!(k < keys);
            hot += u64::from(k < keys * HOT_KEYS / 100);
            deletes += u64::from(d);
        }
        // 80% by choice, plus the uniform draws that land on hot keys.
        let share = hot * 100 / n;
        assert!((80..=82).contains(&share), "{share}% on hot keys");
        assert!((4..=6).contains(&(deletes * 100 / n)), "{deletes} deletes");
    }
}
