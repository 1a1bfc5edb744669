//! The open window: records accounted for and encoded, waiting for their commit.

pub mod admission;
pub mod budget;
pub mod encoder;
pub mod flush;

use std::collections::{HashMap, HashSet};

use deltalake::arrow::array::RecordBatch;
use tokio::time::Instant;

use crate::decode::changes::{Changes, ChangesError, reduce_growing};
use crate::record::TopicPartition;
use encoder::WindowWriter;

use std::time::Duration;

/// When to write and commit buffered records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    /// Rows.
    pub max_rows: u64,
    /// Encoded Parquet bytes.
    pub max_bytes: u64,
    /// Age of the oldest buffered record.
    pub max_age: Duration,
}

impl FlushPolicy {
    /// Whether a window of `rows` rows and `bytes` encoded bytes whose first record
    /// was accounted for `age` ago is to be committed now.
    pub fn due(&self, rows: u64, bytes: u64, age: Duration) -> bool {
        rows >= self.max_rows || bytes >= self.max_bytes || age >= self.max_age
    }
}

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            max_bytes: 128 * 1024 * 1024,
            max_age: Duration::from_secs(30),
        }
    }
}

/// How many times `max_rows` an upsert window may grow to while the previous
/// MERGE still runs. A MERGE's cost is mostly the files it rewrites, which a
/// larger window hardly changes; so rather than wait idle, the window keeps
/// taking changes and the commits keep pace with the MERGEs. The memory budget
/// still bounds what all windows hold.
pub const UPSERT_GROWTH: u64 = 4;

/// Copies of an upsert window's changes its commit holds beside the window's
/// own: the MERGE's source (the segments joined and reduced to a change per
/// key; the join and the reduction are transient, one replaces the other).
/// Measured (10 M rows, 5 M changes, 512 MiB budget, same servers): counting
/// three copies kept peak RSS 205 MiB lower (1,745 against 1,950 MiB) but
/// stopped windows growing while a MERGE ran, and halved throughput (85 k
/// against 171 k changes/s); most of a MERGE's memory is DataFusion's join and
/// the rewritten files' writers, which grow with the files it rewrites, not
/// with the copies counted here.
pub const MERGE_COPIES: u64 = 1;

/// delta-rs streams a file to storage in parts of this size (its default): what a
/// window's encoded bytes keep in memory at most, besides the open row group.
const UPLOAD_PART: u64 = 5 << 20;

/// What an open window's rows become: Parquet files or keyed changes, never
/// both.
#[derive(Default)]
pub enum Body {
    /// No row yet.
    #[default]
    Empty,
    /// An append table's Parquet files, being encoded.
    Files(WindowWriter),
    /// An upsert table's changes (held as they are, not encoded).
    Changes(WindowChanges),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Empty => write!(f, "Empty"),
            Body::Files(w) => write!(f, "Files({} bytes encoded)", w.encoded_bytes()),
            Body::Changes(c) => write!(f, "Changes({} segments)", c.list.len()),
        }
    }
}

/// An upsert window's changes, in offset order, kept reduced to the last
/// change per key as the window grows ([`reduce_growing`]).
#[derive(Debug, Default)]
pub struct WindowChanges {
    /// The segments' changes.
    pub list: Vec<Changes>,
    /// Rows the last reduction left.
    pub reduced: usize,
}

/// A table's open window: the records accounted for since its last commit.
#[derive(Default)]
pub struct Window {
    /// What its rows become.
    pub body: Body,
    /// Rows written.
    pub rows: u64,
    /// Arrow bytes of the rows written (what they took decoded).
    pub raw_bytes: u64,
    /// What the table's decoder keeps from decoding this window's records (about
    /// twice the values of the largest run it decoded), until it is released when
    /// the window is committed.
    pub decoder_bytes: u64,
    /// Records accounted for (rows and rejected).
    pub records: u64,
    /// When the first record was accounted for.
    pub opened_at: Option<Instant>,
    /// Last offset accounted for per partition.
    pub parts: HashMap<TopicPartition, i64>,
    /// Dead letters of this window, for the dead-letter table.
    pub dead: Vec<RecordBatch>,
    /// The partitions the dead letters come from.
    pub dead_parts: HashSet<TopicPartition>,
}

impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Window")
            .field("rows", &self.rows)
            .field("records", &self.records)
            .field("partitions", &self.parts.len())
            .field("dead_letter_batches", &self.dead.len())
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

impl Window {
    /// Whether no record is accounted for.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Parquet bytes encoded so far.
    pub fn encoded_bytes(&self) -> u64 {
        match &self.body {
            Body::Files(w) => w.encoded_bytes(),
            Body::Empty | Body::Changes(_) => 0,
        }
    }

    /// The changes held (none for an append window).
    pub fn changes(&self) -> &[Changes] {
        match &self.body {
            Body::Changes(c) => &c.list,
            Body::Empty | Body::Files(_) => &[],
        }
    }

    /// Add a segment's changes.
    pub fn add_changes(&mut self, c: Changes) {
        match &mut self.body {
            Body::Changes(held) => held.list.push(c),
            body => {
                *body = Body::Changes(WindowChanges {
                    list: vec![c],
                    reduced: 0,
                })
            }
        }
    }

    /// Keep the changes reduced to a change per key as they grow
    /// ([`reduce_growing`]): reduced again once they have doubled since the
    /// last reduction, and at least `min_rows` were added. True when it
    /// reduced; on an error they are left as they are until they double again.
    pub fn reduce_changes(
        &mut self,
        key: &[String],
        order_by: Option<&str>,
        min_rows: usize,
    ) -> Result<bool, ChangesError> {
        let Body::Changes(c) = &mut self.body else {
            return Ok(false);
        };
        reduce_growing(&mut c.list, &mut c.reduced, key, order_by, min_rows).inspect_err(|_| {
            c.reduced = c.list.iter().map(|c| c.rows.num_rows()).sum();
        })
    }

    /// The window's Parquet writer, started by `start` on the first rows.
    pub fn files<E>(
        &mut self,
        start: impl FnOnce() -> Result<WindowWriter, E>,
    ) -> Result<&mut WindowWriter, E> {
        if !matches!(self.body, Body::Files(_)) {
            self.body = Body::Files(start()?);
        }
        match &mut self.body {
            Body::Files(w) => Ok(w),
            Body::Empty | Body::Changes(_) => unreachable!("the body was just made files"),
        }
    }

    /// What the window holds in memory, estimated for the memory budget: the
    /// Arrow bytes of the rows in the Parquet row group being built (parquet keeps
    /// a group's pages and dictionaries until the group closes, every
    /// `row_group_rows` rows, and they take about what the rows took decoded),
    /// the encoded bytes of closed row groups not yet uploaded (at most an upload
    /// part), the dead letters, and what the decoder keeps. Encoded bytes alone undercount
    /// well-compressed rows several times over.
    pub fn held_bytes(&self, row_group_rows: u64) -> u64 {
        let in_group = self.rows % row_group_rows.max(1);
        let raw = if self.rows == 0 {
            0
        } else {
            (u128::from(self.raw_bytes) * u128::from(in_group) / u128::from(self.rows)) as u64
        };
        let dead: u64 = self
            .dead
            .iter()
            .chain(self.changes().iter().map(|c| &c.rows))
            .map(|b| b.get_array_memory_size() as u64)
            .sum();
        // Until a row group has closed, its encoded pages are part of the open group
        // (counted above, and known at once, where the encoder's count lags).
        let uploading = if self.rows >= row_group_rows {
            self.encoded_bytes().min(UPLOAD_PART)
        } else {
            0
        };
        raw + uploading + dead + self.decoder_bytes
    }

    /// The Arrow bytes of an upsert window's changes (0 for an append window).
    pub fn changes_bytes(&self) -> u64 {
        self.changes()
            .iter()
            .map(|c| c.rows.get_array_memory_size() as u64)
            .sum()
    }

    /// What the window holds while it commits, estimated for the memory budget:
    /// what it held open, and for an upsert window [`MERGE_COPIES`] more copies
    /// of its changes (the MERGE's source).
    pub fn committing_bytes(&self, row_group_rows: u64) -> u64 {
        self.held_bytes(row_group_rows) + MERGE_COPIES * self.changes_bytes()
    }

    /// Whether the window is to be committed at `now` under `policy` (an empty
    /// window never is).
    pub fn due(&self, policy: &FlushPolicy, now: Instant) -> bool {
        let age = self
            .opened_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let bytes = self.encoded_bytes() + self.changes_bytes();
        !self.is_empty() && policy.due(self.rows, bytes, age)
    }

    /// Whether the window, due, takes no more records until the previous
    /// commit is done: an append window at once (the policy sizes its files),
    /// an upsert window at [`UPSERT_GROWTH`] times `max_rows`.
    pub fn full(&self, policy: &FlushPolicy, upsert: bool, now: Instant) -> bool {
        self.due(policy, now)
            && (!upsert
                || self.rows >= Self::row_limit(policy, upsert)
                || self.changes_bytes() >= policy.max_bytes.saturating_mul(UPSERT_GROWTH))
    }

    /// The rows a window takes at most while the previous commit runs.
    pub fn row_limit(policy: &FlushPolicy, upsert: bool) -> u64 {
        if upsert {
            policy.max_rows.saturating_mul(UPSERT_GROWTH)
        } else {
            policy.max_rows
        }
    }

    /// Drop what the window holds, aborting its uploads.
    pub fn abort(&mut self) {
        if let Body::Files(w) = std::mem::take(&mut self.body) {
            w.abort();
        }
        *self = Window::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> FlushPolicy {
        FlushPolicy {
            max_rows: 100,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(30),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_is_due_at_max_age_of_its_first_record_not_before() {
        let mut w = Window::default();
        assert!(!w.due(&policy(), Instant::now()), "empty: never due");
        w.records = 1;
        w.rows = 1;
        w.opened_at = Some(Instant::now());
        tokio::time::advance(Duration::from_millis(29_999)).await;
        assert!(!w.due(&policy(), Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(w.due(&policy(), Instant::now()));
    }

    #[test]
    fn a_window_holds_the_decoded_rows_of_its_open_row_group() {
        let mut w = Window::default();
        assert_eq!(w.held_bytes(128), 0);
        w.rows = 100;
        w.raw_bytes = 100_000;
        assert_eq!(w.held_bytes(128), 100_000, "one open group: all of it");
        w.rows = 300;
        w.raw_bytes = 300_000;
        // Groups of 128 rows closed twice: 44 rows are in the open one.
        assert_eq!(w.held_bytes(128), 44_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_is_due_at_max_rows_even_when_young_and_never_when_empty() {
        let mut w = Window {
            records: 100,
            rows: 99,
            opened_at: Some(Instant::now()),
            ..Window::default()
        };
        assert!(!w.due(&policy(), Instant::now()));
        w.rows = 100;
        assert!(w.due(&policy(), Instant::now()));
        // Rejected records count toward the window but not toward max_rows.
        w.rows = 0;
        assert!(!w.due(&policy(), Instant::now()));
        w.abort();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!w.due(&policy(), Instant::now()), "aborted: empty again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_due_upsert_window_keeps_growing_to_its_limit_and_an_append_window_does_not() {
        let mut w = Window {
            records: 100,
            rows: 100,
            opened_at: Some(Instant::now()),
            ..Window::default()
        };
        assert!(w.due(&policy(), Instant::now()));
        assert!(
            w.full(&policy(), false, Instant::now()),
            "append: full when due"
        );
        assert!(!w.full(&policy(), true, Instant::now()), "upsert: grows on");
        w.rows = 399;
        assert!(!w.full(&policy(), true, Instant::now()));
        w.rows = 400;
        assert!(w.full(&policy(), true, Instant::now()));
        assert_eq!(Window::row_limit(&policy(), true), 400);
        assert_eq!(Window::row_limit(&policy(), false), 100);
        // Age makes it due, not full: an old upsert window still grows.
        w.rows = 1;
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(w.due(&policy(), Instant::now()));
        assert!(!w.full(&policy(), true, Instant::now()));
        assert!(w.full(&policy(), false, Instant::now()));
    }

    /// Issue 22, case 9: `max_bytes` never made an upsert window due (it
    /// counted encoded Parquet bytes, and an upsert window encodes none); its
    /// changes' bytes do, and bound its growth while a MERGE runs.
    #[test]
    fn an_upsert_window_is_due_at_max_bytes_of_its_changes() {
        let mut w = Window {
            records: 10,
            rows: 10,
            opened_at: Some(Instant::now()),
            ..Window::default()
        };
        let change = {
            use deltalake::arrow::array::{BooleanArray, Int64Array, RecordBatch};
            let ids = Int64Array::from_iter_values(0..20_000);
            let rows = RecordBatch::try_from_iter([("id", std::sync::Arc::new(ids) as _)]).unwrap();
            crate::decode::changes::Changes::new(rows, BooleanArray::from(vec![false; 20_000]))
        };
        let small = FlushPolicy {
            max_bytes: 100_000,
            ..policy()
        };
        assert!(!w.due(&small, Instant::now()));
        w.add_changes(change.clone());
        assert!(w.changes_bytes() >= 160_000);
        assert!(w.due(&small, Instant::now()), "due by the changes' bytes");
        assert!(!w.full(&small, true, Instant::now()), "grows on, to 4x");
        w.add_changes(change.clone());
        w.add_changes(change);
        assert!(w.full(&small, true, Instant::now()), "full at 4x max_bytes");
    }

    /// Issue 22, case 9: a committing upsert window was counted as what it
    /// held open; the MERGE holds more copies of its changes.
    #[test]
    fn a_committing_upsert_window_counts_the_copies_its_merge_makes() {
        let mut w = Window::default();
        use deltalake::arrow::array::{BooleanArray, Int64Array, RecordBatch};
        let ids = Int64Array::from_iter_values(0..1_000);
        let rows = RecordBatch::try_from_iter([("id", std::sync::Arc::new(ids) as _)]).unwrap();
        w.add_changes(crate::decode::changes::Changes::new(
            rows,
            BooleanArray::from(vec![false; 1_000]),
        ));
        let open = w.held_bytes(128);
        assert_eq!(open, w.changes_bytes());
        assert_eq!(w.committing_bytes(128), (1 + MERGE_COPIES) * open);
    }

    #[test]
    fn bytes_alone_make_a_window_due() {
        assert!(policy().due(1, 1 << 20, Duration::ZERO));
        assert!(!policy().due(1, (1 << 20) - 1, Duration::ZERO));
    }
}
