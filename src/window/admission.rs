//! Which records of a chunk a window takes, and what they account for.
//!
//! The first half of the exactly-once invariant lives here: a record is taken only
//! if it comes from its partition's current epoch (the assignment or seek the
//! pipeline made last) and lies beyond the last offset already accounted for. A
//! record fetched before a rewind, a redelivery after a seek, or a partition no
//! longer assigned is dropped, so no offset is accounted for twice.

use crate::record::{RecordChunk, TopicPartition};

/// Where a partition's records are taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The epoch of its current assignment or seek.
    pub epoch: u64,
    /// The last offset accounted for (in a window, in flight or stored).
    pub seen_last: Option<i64>,
}

/// Which records of `chunk` to take, by index: those of partitions whose
/// `position` is known, tagged with its epoch, beyond its last offset accounted for
/// (and beyond any earlier record of the same chunk).
pub fn admit(
    chunk: &RecordChunk,
    position: impl Fn(&TopicPartition) -> Option<Position>,
) -> Vec<bool> {
    let mut last: Vec<Option<Option<i64>>> = chunk
        .partitions
        .iter()
        .map(|cp| {
            position(&cp.tp)
                .filter(|p| p.epoch == cp.epoch)
                .map(|p| p.seen_last)
        })
        .collect();
    let mut keep = vec![false; chunk.len()];
    for (i, r) in chunk.records.iter().enumerate() {
        if let Some(seen) = &mut last[r.part as usize]
            && seen.is_none_or(|s| r.offset > s)
        {
            keep[i] = true;
            *seen = Some(r.offset);
        }
    }
    keep
}

/// Per chunk partition (by index), the offset of its last kept record in `range`:
/// what a window accounts for, whatever became of the records (rows or rejected).
/// Kept offsets only grow within a partition, so one pass finds each.
pub fn last_kept(
    chunk: &RecordChunk,
    keep: &[bool],
    range: std::ops::Range<usize>,
) -> Vec<Option<i64>> {
    let mut last = vec![None; chunk.partitions.len()];
    for i in range.filter(|&i| keep[i]) {
        let r = &chunk.records[i];
        last[r.part as usize] = Some(r.offset);
    }
    last
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// `offsets` of `tp`, then `more` of `other`, both at epoch 7.
    fn chunk(
        tp: &TopicPartition,
        offsets: &[i64],
        other: &TopicPartition,
        more: &[i64],
    ) -> RecordChunk {
        let mut c = RecordChunk::default();
        c.push_offsets(tp, 7, offsets.iter().copied());
        c.push_offsets(other, 7, more.iter().copied());
        c
    }

    #[test]
    fn only_the_current_epoch_beyond_the_last_offset_accounted_for_is_taken() {
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        // Partition 0 redelivers 8..=9 after a seek, partition 1 repeats 5 in the chunk.
        let c = chunk(&a, &[8, 9, 10, 11], &b, &[5, 5, 6]);
        let positions: HashMap<TopicPartition, Position> = [
            (
                a.clone(),
                Position {
                    epoch: 7,
                    seen_last: Some(9),
                },
            ),
            (
                b.clone(),
                Position {
                    epoch: 7,
                    seen_last: None,
                },
            ),
        ]
        .into();
        let keep = admit(&c, |tp| positions.get(tp).copied());
        assert_eq!(keep, [false, false, true, true, true, false, true]);
        assert_eq!(last_kept(&c, &keep, 0..c.len()), [Some(11), Some(6)]);
        assert_eq!(last_kept(&c, &keep, 0..3), [Some(10), None]);
    }

    #[test]
    fn records_of_an_older_epoch_or_an_unassigned_partition_are_dropped() {
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let c = chunk(&a, &[1, 2], &b, &[1]);
        // Partition 0 was sought again (epoch 8) after this chunk was fetched at 7;
        // partition 1 was revoked.
        let stale = admit(&c, |tp| {
            (*tp == a).then_some(Position {
                epoch: 8,
                seen_last: None,
            })
        });
        assert_eq!(stale, [false, false, false]);
        assert_eq!(last_kept(&c, &stale, 0..c.len()), [None, None]);
    }
}
