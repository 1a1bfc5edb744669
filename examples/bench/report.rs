//! The text report of a run.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, FixedOffset};

use crate::daemons::Sample;
use crate::measure::{Commit, Startup, percentile};

/// What a run measured.
pub struct Outcome {
    pub scenario: String,
    pub settings: String,
    pub records: u64,
    pub payload_bytes: u64,
    /// Seconds from the daemons' start to caught up.
    pub wall: f64,
    pub samples: Vec<Sample>,
    /// Per daemon: CPU seconds, CPU seconds when it first held partitions, peak
    /// RSS bytes, start-up.
    pub daemons: Vec<(f64, Option<f64>, u64, Startup)>,
    /// Every daemon's commits, in time order.
    pub commits: Vec<Commit>,
    /// When the daemons were started.
    pub started: DateTime<FixedOffset>,
    /// CPU seconds of the broker and the S3 server during the run.
    pub servers_cpu: (f64, f64),
    pub s3: BTreeMap<&'static str, u64>,
    /// Seconds it took to grow the log first, when it was.
    pub grown: Option<(u64, f64)>,
}

fn p50_p99(ms: &[u64]) -> String {
    let mut sorted = ms.to_vec();
    sorted.sort_unstable();
    format!(
        "p50 {} p99 {} max {}",
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted.last().copied().unwrap_or(0)
    )
}

pub fn render(o: &Outcome) -> String {
    let mut r = String::new();
    let n = o.records as f64;
    let mb = o.payload_bytes as f64 / 1e6;
    let cpu: f64 = o.daemons.iter().map(|d| d.0).sum();
    let _ = writeln!(r, "scenario      {}", o.scenario);
    let _ = writeln!(r, "settings      {}", o.settings);
    if let Some((versions, secs)) = o.grown {
        let _ = writeln!(
            r,
            "log           grown by {versions} versions in {secs:.1} s before the start"
        );
    }
    let _ = writeln!(
        r,
        "records/s     {:.0} ({} records, {:.1} MB, in {:.1} s from the daemons' start, group join included)",
        n / o.wall,
        o.records,
        mb,
        o.wall
    );
    let assigned = o
        .daemons
        .iter()
        .filter_map(|d| d.3.assigned)
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.min(x))));
    if let Some(a) = assigned {
        let _ = writeln!(
            r,
            "from assign   {:.0} records/s, {:.1} MB/s ({:.1} s from the first assignment)",
            n / (o.wall - a),
            mb / (o.wall - a),
            o.wall - a
        );
    }
    for (i, (_, _, _, s)) in o.daemons.iter().enumerate() {
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2} s"));
        let _ = writeln!(
            r,
            "start-up {i:<4} since the start: tables open at {}, partitions assigned at {}; stored offsets read {} after the assignment",
            f(s.tables_open),
            f(s.assigned),
            f(s.offsets_read)
        );
    }
    let _ = writeln!(
        r,
        "CPU           {:.2} s per million records ({cpu:.1} s in all, {} daemon(s); broker {:.1} s, S3 server {:.1} s)",
        cpu / (n / 1e6),
        o.daemons.len(),
        o.servers_cpu.0,
        o.servers_cpu.1
    );
    let before: f64 = o.daemons.iter().filter_map(|d| d.1).sum();
    let _ = writeln!(
        r,
        "CPU ingesting {:.2} s per million records from the assignment ({before:.1} s before it)",
        (cpu - before) / (n / 1e6)
    );
    let peak = o.daemons.iter().map(|d| d.2).max().unwrap_or(0);
    let _ = writeln!(
        r,
        "peak RSS      {:.0} MiB (largest daemon)",
        peak as f64 / (1u64 << 20) as f64
    );
    let held = o.samples.iter().map(|s| s.held_bytes).fold(0.0, f64::max);
    let early = o.samples.last().map_or(0.0, |s| s.flushed_early);
    let _ = writeln!(
        r,
        "windows       peak {:.1} MiB held (open and committing, all tables), {early:.0} flushed early by the memory budget",
        held / (1u64 << 20) as f64
    );
    let files: u64 = o.commits.iter().map(|c| c.files).sum();
    let bytes: u64 = o.commits.iter().map(|c| c.bytes).sum();
    let conflicts: u64 = o.commits.iter().map(|c| c.conflicts).sum();
    let span = match (o.commits.first(), o.commits.last()) {
        (Some(a), Some(b)) => (b.at - a.at).num_milliseconds() as f64 / 60_000.0,
        _ => 0.0,
    };
    let k = o.commits.len().max(1) as f64;
    let _ = writeln!(
        r,
        "commits       {} ({:.1} per minute), {:.1} files per commit, mean file {:.2} MiB, {:.2} conflicts per commit",
        o.commits.len(),
        if span > 0.0 {
            o.commits.len() as f64 / span
        } else {
            0.0
        },
        files as f64 / k,
        if files > 0 {
            bytes as f64 / files as f64 / (1u64 << 20) as f64
        } else {
            0.0
        },
        conflicts as f64 / k
    );
    let ms: Vec<u64> = o.commits.iter().map(|c| c.ms).collect();
    let _ = writeln!(r, "commit ms     {}", p50_p99(&ms));
    if ms.len() >= 8 {
        let q: Vec<String> = ms.chunks(ms.len().div_ceil(4)).map(p50_p99).collect();
        let _ = writeln!(r, "  by quarter  {}", q.join(" | "));
    }
    if !o.s3.is_empty() {
        let gb = o.payload_bytes as f64 / 1e9;
        let per_gb: Vec<String> =
            o.s3.iter()
                .map(|(kind, v)| format!("{kind} {:.0}", *v as f64 / gb))
                .collect();
        let lists = o.s3.get("LIST").copied().unwrap_or(0) as f64 / k;
        let _ = writeln!(
            r,
            "S3 per GB     {} ({lists:.1} LIST per commit; counted in the S3 server log)",
            per_gb.join(", ")
        );
    }
    r
}
