//! What is measured: the daemons' `/metrics`, their CPU and memory from `/proc`,
//! their JSON logs (commits, start-up), and the S3 server's request log.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, FixedOffset};

/// Counters and gauges read from a daemon's `/metrics`.
pub fn scrape(addr: &str) -> Option<BTreeMap<String, f64>> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(
        body.lines()
            .filter(|l| l.starts_with("tributary_") && !l.contains('{'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_owned(), v.parse().ok()?))
            })
            .collect(),
    )
}

/// (user + system CPU seconds, peak RSS bytes) of a live process.
pub fn cpu_and_peak_rss(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`; utime and stime are fields 14 and 15 overall.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Linux reports these in USER_HZ clock ticks, 100 per second on every
    // mainstream kernel configuration.
    let cpu = (field(11) + field(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    (cpu, hwm)
}

/// S3 requests by kind in the server's request log from byte `from` on.
pub fn s3_requests(log: &Path, from: u64) -> BTreeMap<&'static str, u64> {
    let mut counts = BTreeMap::new();
    let Ok(mut f) = std::fs::File::open(log) else {
        return counts;
    };
    let mut text = String::new();
    let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(from));
    let _ = f.read_to_string(&mut text);
    for line in text.lines() {
        let Some(req) = line.split('"').nth(1) else {
            continue;
        };
        let mut parts = req.split(' ');
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
            continue;
        };
        let kind = match method {
            "PUT" => "PUT",
            "POST" => "POST",
            "HEAD" => "HEAD",
            "DELETE" => "DELETE",
            "GET" if path.contains("list-type") || path.contains("?prefix") => "LIST",
            "GET" => "GET",
            _ => continue,
        };
        *counts.entry(kind).or_default() += 1;
    }
    counts
}

/// A commit, from a daemon's log.
#[derive(Debug, Clone)]
pub struct Commit {
    /// When it was logged.
    pub at: DateTime<FixedOffset>,
    pub ms: u64,
    pub bytes: u64,
    pub files: u64,
    pub conflicts: u64,
}

/// Lines of a daemon's JSON log, parsed.
pub fn log_lines(log: &Path) -> Vec<serde_json::Value> {
    let Ok(f) = std::fs::File::open(log) else {
        return Vec::new();
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .collect()
}

fn at(line: &serde_json::Value) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(line["timestamp"].as_str()?).ok()
}

fn message(line: &serde_json::Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or_default()
}

/// Every commit in a daemon's log.
pub fn commits(lines: &[serde_json::Value]) -> Vec<Commit> {
    lines
        .iter()
        .filter(|v| message(v) == "committed")
        .filter_map(|v| {
            let f = &v["fields"];
            Some(Commit {
                at: at(v)?,
                ms: f["ms"].as_u64().unwrap_or(0),
                bytes: f["bytes"].as_u64().unwrap_or(0),
                files: f["files"].as_u64().unwrap_or(0),
                conflicts: f["conflicts"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

/// A daemon's start-up, from its log: seconds from its start to its tables being
/// open, to its first assignment, and from that assignment to the last stored
/// offset it read for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Startup {
    pub tables_open: Option<f64>,
    pub assigned: Option<f64>,
    pub offsets_read: Option<f64>,
}

pub fn startup(lines: &[serde_json::Value]) -> Startup {
    let first = |msg: &str| lines.iter().find(|l| message(l) == msg).and_then(at);
    let Some(start) = first("starting ingest") else {
        return Startup::default();
    };
    let secs = |t: DateTime<FixedOffset>| (t - start).num_milliseconds() as f64 / 1000.0;
    let assigned = first("partitions assigned");
    let offsets_read = assigned.and_then(|a| {
        // The assignment's burst of "starting partition" lines, before any commit.
        lines
            .iter()
            .skip_while(|l| message(l) != "partitions assigned")
            .take_while(|l| message(l) != "committed")
            .filter(|l| message(l) == "starting partition after its stored offset")
            .filter_map(at)
            .last()
            .map(|t| (t - a).num_milliseconds() as f64 / 1000.0)
    });
    Startup {
        tables_open: lines
            .iter()
            .filter(|l| message(l) == "table open")
            .filter_map(at)
            .next_back()
            .map(secs),
        assigned: assigned.map(secs),
        offsets_read,
    }
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}
