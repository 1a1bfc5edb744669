//! The text the commands print (their `--json` forms are the reports' serde).

use std::fmt::Write;

use crate::ops::demo::DemoReport;
use crate::ops::maintenance::{CompactPlan, CompactReport, VacuumReport};
use crate::ops::offsets::OffsetsReport;
use crate::ops::restore::RestoreReport;

/// One line: what a compaction would rewrite.
pub fn compact_plan(plan: &CompactPlan) -> String {
    format!(
        "plan for {} at version {}: rewrite {} of {} files ({} of {} bytes) into about {} file(s) of up to {} bytes{}",
        plan.table,
        plan.version,
        plan.files_in,
        plan.files_before,
        plan.bytes_in,
        plan.bytes_before,
        plan.files_out_estimate,
        plan.target_file_size,
        plan.skip_reason
            .as_ref()
            .map(|r| format!("; nothing to do: {r}"))
            .unwrap_or_default()
    )
}

/// What a compaction did: a line per partition when there are several or one
/// lost to other writers, then the totals.
pub fn compact_report(report: &CompactReport) -> String {
    if let Some(reason) = &report.plan.skip_reason {
        return format!("nothing to do: {reason}");
    }
    let mut out = String::new();
    let several = report.partitions.len() > 1 || report.conflicts > 0;
    for p in report.partitions.iter().filter(|_| several) {
        let _ = write!(
            out,
            "  {}: removed {} files, added {} files",
            if p.partition.is_empty() {
                "table"
            } else {
                &p.partition
            },
            p.files_removed,
            p.files_added
        );
        if p.conflicts > 0 {
            let _ = write!(out, ", {} attempt(s) lost to other commits", p.conflicts);
        }
        if let Some(e) = &p.gave_up {
            let _ = write!(out, "; LEFT AS IT WAS after {} attempts: {e}", p.attempts);
        }
        out.push('\n');
    }
    let _ = write!(
        out,
        "compacted {}: removed {} files ({} bytes), added {} files ({} bytes) in {} partition(s), version {}",
        report.plan.table,
        report.files_removed,
        report.bytes_removed,
        report.files_added,
        report.bytes_added,
        report.partitions.len(),
        report.version.map_or("-".to_owned(), |v| v.to_string())
    );
    if report.gave_up > 0 {
        let _ = write!(
            out,
            "\n{} partition(s) not compacted: other writers' commits kept touching their files; \
             run compact again (or with a higher --max-attempts)",
            report.gave_up
        );
    }
    out
}

/// A line per file deleted (or to be), then a summary.
pub fn vacuum_report(report: &VacuumReport) -> String {
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    let mut out = String::new();
    for f in &report.files {
        let _ = writeln!(out, "{verb} {f}");
    }
    let _ = writeln!(
        out,
        "{verb} {} file(s) from {} (retention {:.0}h, {} mode)",
        report.files.len(),
        report.table,
        report.retention_hours,
        if report.full { "full" } else { "lite" }
    );
    out
}

/// A line per partition moved, then the version committed (or the dry run).
pub fn offsets_report(report: &OffsetsReport) -> String {
    let mut out = String::new();
    for c in &report.changes {
        let before = c.before.map_or("-".to_owned(), |b| b.to_string());
        let _ = writeln!(
            out,
            "{:<40} stored offset {before:>10} -> {:>10}",
            c.partition, c.after
        );
    }
    let _ = match report.version {
        Some(v) => writeln!(out, "committed as table version {v}"),
        None => writeln!(out, "dry run: nothing committed"),
    };
    out
}

/// The plan (or what was done): versions, files, a line per partition moved.
pub fn restore_report(r: &RestoreReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "restore table version {} -> {}: {} file(s) restored, {} removed",
        r.from_version, r.to_version, r.files_restored, r.files_removed
    );
    for m in &r.partitions {
        let before = m.before.map_or("-".to_owned(), |b| b.to_string());
        let _ = writeln!(
            out,
            "{:<40} stored offset {before:>10} -> {:>10}  ({} to replay)",
            m.partition, m.after, m.replayed
        );
    }
    let _ = writeln!(
        out,
        "{} record offset(s) will be read again after the restore",
        r.replayed
    );
    let _ = match r.version {
        Some(v) => writeln!(out, "committed as table version {v}"),
        None => writeln!(out, "dry run: nothing committed"),
    };
    out
}

/// The demo's report: the table, the counts, offsets per partition, the verdict.
pub fn demo_report(r: &DemoReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "table            {}", r.table_uri);
    let _ = writeln!(out, "version          {}", r.version);
    let _ = writeln!(out, "data files       {}", r.files);
    let _ = writeln!(
        out,
        "events produced  {} ({} malformed on purpose)",
        r.produced, r.produced_bad
    );
    let _ = writeln!(
        out,
        "rows in table    {} ({} distinct partition/offset)",
        r.rows, r.distinct
    );
    let _ = writeln!(
        out,
        "rejected         {} (malformed JSON: counted, offsets accounted; a [dead_letters] table keeps each with its reason)",
        r.rejected
    );
    let _ = writeln!(out, "ingest time      {:.1}s", r.elapsed.as_secs_f64());
    let _ = writeln!(out, "partition  stored offset  last produced");
    for (p, (stored, last)) in &r.offsets {
        let s = stored.map_or("-".to_owned(), |s| s.to_string());
        let _ = writeln!(out, "{p:>9}  {s:>13}  {last:>13}");
    }
    let _ = if r.exactly_once {
        writeln!(
            out,
            "exactly once     yes: every good event once, every malformed one rejected, offsets at the partition ends"
        )
    } else {
        writeln!(out, "exactly once     NO: see the figures above")
    };
    out
}
