//! The memory budget shared by every table's windows.
//!
//! Each table has an open window (its Parquet file being encoded and streamed) and
//! at most one window committing. Their flush policies bound each one, not their
//! sum: a `{topic}` route over hundreds of topics would hold hundreds of windows
//! filling towards `max_bytes`. The budget bounds the sum, for any number of
//! tables: when the windows hold more than the budget, the largest open ones are
//! committed early until what stays open fits in three quarters of it; and while
//! the open and committing windows together hold the budget, the pipeline takes
//! no records until commits finish, so the chunk channel fills and the poll
//! thread pauses its partitions (back-pressure) before memory runs out. What the
//! windows hold exceeds the budget by about a chunk: the one being written, and
//! the batches queued to the encoders, counted once they are written.
//!
//! A window's weight is what it holds in memory, estimated by
//! [`super::Window::held_bytes`]: the decoded (Arrow) size of the rows in its
//! open Parquet row group, the encoded bytes not yet uploaded, and its dead
//! letters. (Encoded bytes alone undercounted: 200 tables of well-compressed rows
//! held 89 MiB encoded at a peak RSS of 1.2 GiB.) What the budget costs is file
//! size: a window committed early makes a smaller file.

/// What one table's windows hold, for [`MemoryBudget::flush_early`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    /// Bytes held by the open window.
    pub open: u64,
    /// Bytes held by the window being committed (0 when none is).
    pub committing: u64,
}

impl Held {
    /// Whether the open window may be committed now: it holds something and its
    /// table has no commit in flight (one commit per table at a time).
    fn flushable(&self) -> bool {
        self.open > 0 && self.committing == 0
    }
}

/// The budget across every table's windows, in bytes held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    limit: u64,
}

impl MemoryBudget {
    /// The smallest budget accepted: below it, every window would be cut to a few
    /// rows.
    pub const MIN: u64 = 1 << 20;
    /// The default: 256 MiB held by all windows together.
    pub const DEFAULT: u64 = 256 << 20;

    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self { limit }
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// What the tables' windows hold together.
    pub fn total(held: &[Held]) -> u64 {
        held.iter().map(|h| h.open + h.committing).sum()
    }

    /// The tables (indexes into `held`) whose open windows are to be committed now,
    /// largest first: none while the total is within the limit; otherwise enough
    /// of them to bring the total to three quarters of it, as far as windows are
    /// free to commit.
    pub fn flush_early(&self, held: &[Held]) -> Vec<usize> {
        let mut total = Self::total(held);
        if total <= self.limit {
            return Vec::new();
        }
        let low_water = self.limit / 4 * 3;
        let mut candidates: Vec<usize> = (0..held.len()).filter(|&i| held[i].flushable()).collect();
        // Largest first; ties by index, so the choice is deterministic.
        candidates.sort_by_key(|&i| (std::cmp::Reverse(held[i].open), i));
        let mut chosen = Vec::new();
        for i in candidates {
            if total <= low_water {
                break;
            }
            // A committed window's buffers are freed as its file is closed.
            total -= held[i].open;
            chosen.push(i);
        }
        chosen
    }

    /// Whether intake must pause: the open and committing windows hold the limit
    /// or more (after [`MemoryBudget::flush_early`] has picked the windows that
    /// make room once their commits finish). Records wait in Kafka meanwhile.
    pub fn exhausted(&self, held: &[Held]) -> bool {
        Self::total(held) >= self.limit
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        Self::new(Self::DEFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn open(mib: u64) -> Held {
        Held {
            open: mib * MIB,
            committing: 0,
        }
    }

    #[test]
    fn within_the_budget_nothing_is_flushed_early_however_many_tables() {
        let b = MemoryBudget::new(100 * MIB);
        let held = vec![open(0); 10_000];
        assert!(b.flush_early(&held).is_empty());
        let held: Vec<Held> = (0..100).map(|_| open(1)).collect();
        assert_eq!(MemoryBudget::total(&held), 100 * MIB);
        assert!(b.flush_early(&held).is_empty(), "at the limit, not over it");
        assert!(!b.exhausted(&[open(99)]));
    }

    #[test]
    fn over_the_budget_the_largest_windows_are_flushed_until_three_quarters_remain() {
        let b = MemoryBudget::new(100 * MIB);
        // 200 tables of 1 MiB and three big ones: 230 MiB in all.
        let mut held: Vec<Held> = (0..200).map(|_| open(1)).collect();
        held.push(open(10));
        held.push(open(5));
        held.push(open(15));
        let chosen = b.flush_early(&held);
        assert_eq!(&chosen[..3], &[202, 200, 201], "largest first");
        let left = MemoryBudget::total(&held) - chosen.iter().map(|&i| held[i].open).sum::<u64>();
        assert_eq!(left, 75 * MIB, "down to the low-water mark, not further");
        assert_eq!(chosen.len(), 3 + 125);
    }

    #[test]
    fn committing_windows_count_but_cannot_be_flushed_again() {
        let b = MemoryBudget::new(100 * MIB);
        let held = [
            Held {
                open: 40 * MIB,
                committing: 50 * MIB,
            },
            open(20),
        ];
        // 110 MiB: table 0 is busy committing, so table 1 goes, leaving 90 MiB
        // once the commits finish; until then intake waits.
        assert_eq!(b.flush_early(&held), vec![1]);
        assert!(
            b.exhausted(&held),
            "over the budget until the commits finish"
        );
        let after = [
            Held {
                open: 40 * MIB,
                committing: 0,
            },
            Held {
                open: 0,
                committing: 20 * MIB,
            },
        ];
        assert!(!b.exhausted(&after), "table 0's commit landed: room again");
        assert!(b.flush_early(&after).is_empty());
        let busy = [Held {
            open: 60 * MIB,
            committing: 50 * MIB,
        }];
        assert!(b.flush_early(&busy).is_empty(), "a commit already runs");
        assert!(b.exhausted(&busy), "nothing to flush: intake pauses");
    }

    #[test]
    fn the_sum_stays_bounded_as_tables_are_added() {
        // Whatever the number of tables, flushing what flush_early picks keeps the
        // total at or under the limit once the commits it started finish.
        let b = MemoryBudget::new(64 * MIB);
        for tables in [1usize, 10, 200, 2_000] {
            let mut held: Vec<Held> = (0..tables).map(|i| open(1 + (i as u64 % 7))).collect();
            let chosen = b.flush_early(&held);
            for i in chosen {
                held[i] = Held::default();
            }
            assert!(
                MemoryBudget::total(&held) <= 64 * MIB,
                "{tables} tables: {} MiB",
                MemoryBudget::total(&held) / MIB
            );
        }
    }
}
