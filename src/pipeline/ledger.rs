//! The ledger of assigned partitions: per partition, the epoch its records must
//! carry, the offset stored in its table, and the last offset accounted for. It
//! plans each window's commit (the compare-and-swap expectations) and applies its
//! outcome, which is the second half of the exactly-once invariant (the first is
//! the admission filter in [`crate::window::admission`]): a commit expects exactly
//! the offset this pipeline knows to be stored, and advances a partition only if
//! the partition is still at the epoch the window was filled under.

use std::collections::{BTreeSet, HashMap};

use crate::record::{RecordChunk, TopicPartition};
use crate::sink::commit::PartitionCommit;
use crate::window::Window;

#[derive(Debug)]
pub(super) struct PartState {
    /// Epoch of the current assignment or seek; records of other epochs are stale.
    pub(super) epoch: u64,
    /// Offset stored in the table, as far as this pipeline knows.
    pub(super) committed: Option<i64>,
    /// Last offset accounted for (in the window, in flight or committed).
    pub(super) seen_last: Option<i64>,
    /// The sink (table) its records go to; `None` while its table cannot be
    /// opened (storage or registry unavailable at assignment): the rewind opens it.
    pub(super) sink: Option<usize>,
    /// Offset stored in the dead-letter table.
    pub(super) dead_committed: Option<i64>,
    /// Offsets above `committed` whose dead letters are already in the dead-letter
    /// table (their window's rows never landed): on the replay they are rejected
    /// again whatever the decoder says now, and only records not among them are
    /// written there (see `dead_letter`).
    pub(super) dead_kept: BTreeSet<i64>,
}

/// What a table stores for a partition: (its offset, the dead-letter table's
/// offset, the dead letters kept above the first).
pub(super) type Stored = (Option<i64>, Option<i64>, BTreeSet<i64>);

impl PartState {
    /// A partition starting at `epoch` after what its tables store.
    pub(super) fn starting(epoch: u64, sink: Option<usize>, stored: Stored) -> Self {
        let (committed, dead_committed, dead_kept) = stored;
        Self {
            epoch,
            committed,
            seen_last: committed,
            sink,
            dead_committed,
            dead_kept,
        }
    }

    /// Continue from what the tables store, under a new epoch: records fetched
    /// before are dropped, and nothing above the stored offset counts as seen.
    pub(super) fn rewind(&mut self, epoch: u64, stored: Stored) {
        *self = Self::starting(epoch, self.sink, stored);
    }
}

/// A flushed window's partitions: (partition, epoch at flush, last offset).
pub(super) type Flushed = Vec<(TopicPartition, u64, i64)>;

/// The commit plan of a window: per partition still assigned, the offset expected
/// in the table (compare-and-swap) and the window's last offset, sorted by
/// partition; and what to check the outcome against.
pub(super) fn plan_commit(
    parts: &HashMap<TopicPartition, PartState>,
    window: impl IntoIterator<Item = (TopicPartition, i64)>,
) -> (Vec<PartitionCommit>, Flushed) {
    let mut partitions = Vec::new();
    let mut flushed = Vec::new();
    for (tp, last) in window {
        // Revoked since: its records are someone else's now.
        let Some(p) = parts.get(&tp) else {
            continue;
        };
        partitions.push(PartitionCommit {
            tp: tp.clone(),
            expected: p.committed,
            last,
        });
        flushed.push((tp, p.epoch, last));
    }
    partitions.sort_by(|a, b| a.tp.cmp(&b.tp));
    (partitions, flushed)
}

/// A window's commit landed: the partitions still at the epoch it was filled
/// under now have its offsets stored. A partition sought or reassigned since
/// keeps what its new epoch read from the table.
pub(super) fn committed(parts: &mut HashMap<TopicPartition, PartState>, flushed: &Flushed) {
    for (tp, epoch, last) in flushed {
        if let Some(p) = parts.get_mut(tp)
            && p.epoch == *epoch
        {
            p.committed = Some(*last);
        }
    }
}

/// A window's dead letters landed: the same rule, for the dead-letter table.
pub(super) fn dead_committed(
    parts: &mut HashMap<TopicPartition, PartState>,
    flushed: &Flushed,
    dead: &[(TopicPartition, i64)],
) {
    for (tp, last) in dead {
        if let Some(p) = parts.get_mut(tp)
            && flushed.iter().any(|(t, e, _)| t == tp && *e == p.epoch)
        {
            p.dead_committed = Some(*last);
        }
    }
}

/// Account for the kept records of a chunk segment in `window`: per partition, its
/// last kept offset (see [`crate::window::admission::last_kept`]).
pub(super) fn account(
    parts: &mut HashMap<TopicPartition, PartState>,
    window: &mut Window,
    chunk: &RecordChunk,
    last_kept: &[Option<i64>],
) {
    for (cp, last) in chunk.partitions.iter().zip(last_kept) {
        if let Some(offset) = *last
            && let Some(p) = parts.get_mut(&cp.tp)
        {
            p.seen_last = Some(offset);
            window.parts.insert(cp.tp.clone(), offset);
        }
    }
}

/// The dead-letter table's part of a window's commit for one partition: from the
/// offset that table holds to the window's last, except that a replayed window
/// ending below what the table already holds never moves it back.
pub(super) fn dead_letter_commit(
    window: &PartitionCommit,
    dead_committed: Option<i64>,
) -> PartitionCommit {
    PartitionCommit {
        tp: window.tp.clone(),
        expected: dead_committed,
        last: dead_committed.map_or(window.last, |d| d.max(window.last)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::admission::{self, Position};

    #[test]
    fn the_dead_letter_offset_never_moves_back() {
        let window = |last| PartitionCommit {
            tp: TopicPartition::new("t", 0),
            expected: Some(3),
            last,
        };
        // First window of the partition in the dead-letter table.
        assert_eq!(dead_letter_commit(&window(9), None).expected, None);
        assert_eq!(dead_letter_commit(&window(9), None).last, 9);
        // A replay that goes past what the table holds moves it forward.
        let c = dead_letter_commit(&window(12), Some(9));
        assert_eq!((c.expected, c.last), (Some(9), 12));
        // A replay that ends below it leaves it where it is (no move).
        let c = dead_letter_commit(&window(6), Some(9));
        assert_eq!((c.expected, c.last), (Some(9), 9));
    }

    fn chunk(tp: &TopicPartition, epoch: u64, offsets: std::ops::Range<i64>) -> RecordChunk {
        let mut c = RecordChunk::default();
        c.push_offsets(tp, epoch, offsets);
        c
    }

    /// Admit and account a chunk into `window`, as the pipeline does.
    fn take(parts: &mut HashMap<TopicPartition, PartState>, window: &mut Window, c: &RecordChunk) {
        let keep = admission::admit(c, |tp| {
            parts.get(tp).map(|p| Position {
                epoch: p.epoch,
                seen_last: p.seen_last,
            })
        });
        let last = admission::last_kept(c, &keep, 0..c.len());
        account(parts, window, c, &last);
        window.records += keep.iter().filter(|k| **k).count() as u64;
    }

    /// The invariant, without a server: through redeliveries, a failed upload, a
    /// rewind and records fetched before it, the offsets committed are 0..=9, each
    /// in exactly one commit, and every commit expects what the previous stored.
    #[test]
    fn committed_ranges_tile_the_partition_through_redelivery_failure_and_rewind() {
        let tp = TopicPartition::new("t", 0);
        let mut parts: HashMap<_, _> = [(
            tp.clone(),
            PartState::starting(1, Some(0), (None, None, BTreeSet::new())),
        )]
        .into();
        let mut landed: Vec<PartitionCommit> = Vec::new();
        let mut commit = |parts: &mut HashMap<_, _>, window: Window, lands: bool| {
            let (plan, flushed) = plan_commit(parts, window.parts);
            if lands {
                committed(parts, &flushed);
                landed.extend(plan);
            }
        };
        // 0..5, committed.
        let mut w = Window::default();
        take(&mut parts, &mut w, &chunk(&tp, 1, 0..5));
        commit(&mut parts, w, true);
        // 3..8 redelivered over 3 and 4: only 5..7 are new. The upload fails.
        let mut w = Window::default();
        take(&mut parts, &mut w, &chunk(&tp, 1, 3..8));
        assert_eq!(w.parts[&tp], 7);
        commit(&mut parts, w, false);
        // The rewind: epoch 2, from the stored offset.
        let stored = parts[&tp].committed;
        parts
            .get_mut(&tp)
            .unwrap()
            .rewind(2, (stored, None, BTreeSet::new()));
        // A chunk fetched before the seek (epoch 1) is dropped whole.
        let mut w = Window::default();
        take(&mut parts, &mut w, &chunk(&tp, 1, 8..11));
        assert!(w.is_empty(), "records of the old epoch: {w:?}");
        // The replay from 5.
        take(&mut parts, &mut w, &chunk(&tp, 2, 5..10));
        commit(&mut parts, w, true);
        let ranges: Vec<(Option<i64>, i64)> = landed.iter().map(|p| (p.expected, p.last)).collect();
        assert_eq!(ranges, [(None, 4), (Some(4), 9)]);
    }

    #[test]
    fn an_outcome_of_an_older_epoch_leaves_the_new_epoch_alone() {
        let tp = TopicPartition::new("t", 0);
        let mut parts: HashMap<_, _> = [(
            tp.clone(),
            PartState::starting(1, Some(0), (Some(9), Some(3), BTreeSet::new())),
        )]
        .into();
        let mut w = Window::default();
        w.parts.insert(tp.clone(), 20);
        let (plan, flushed) = plan_commit(&parts, w.parts);
        assert_eq!((plan[0].expected, plan[0].last), (Some(9), 20));
        // Revoked and assigned again while the commit ran: epoch 5, stored 9 read.
        parts
            .get_mut(&tp)
            .unwrap()
            .rewind(5, (Some(9), Some(3), BTreeSet::new()));
        committed(&mut parts, &flushed);
        dead_committed(&mut parts, &flushed, &[(tp.clone(), 20)]);
        let p = &parts[&tp];
        assert_eq!((p.committed, p.dead_committed), (Some(9), Some(3)));
        // Partitions revoked meanwhile are left out of the plan.
        let mut w = Window::default();
        w.parts.insert(TopicPartition::new("t", 1), 4);
        assert!(plan_commit(&parts, w.parts).0.is_empty());
    }
}
