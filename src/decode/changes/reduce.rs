//! A window's changes reduced to the last change of each key, by the order
//! they were read in or by an `order_by` column; the same rule decides in the
//! MERGE whether a change replaces the table's row.

use std::collections::HashMap;

use deltalake::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt32Array};
use deltalake::arrow::compute::{take, take_record_batch};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::row::{RowConverter, Rows, SortField};

use super::{Changes, ChangesError};

/// The last change of each key, in the order read; an error when a key column
/// is missing or holds a null, or the order column is missing.
///
/// The changes of a key are folded in the order read: a change replaces the
/// one before it unless both have an `order_by` value and its own is smaller
/// (where either has none, the later read wins; among equals too). So the
/// result never depends on where windows begin and end: a window's result is
/// its last kept change, applied to the table's row by the same rule, except
/// that once a change without an order value was read, what follows no longer
/// depends on the row before the window, and the kept change is marked
/// [`Changes::unconditional`].
pub fn reduce(
    key: &[String],
    order_by: Option<&str>,
    changes: &Changes,
) -> Result<Changes, ChangesError> {
    let rows = &changes.rows;
    let keys = RowConverter::new(sort_fields(rows, key)?)?
        .convert_columns(&non_null_columns(rows, key)?)?;
    let order = order_by.map(|o| Order::new(rows, o)).transpose()?;
    // Key -> its last kept change, and whether the window's result for it is
    // unconditional.
    let mut last: HashMap<_, (u32, bool)> = HashMap::with_capacity(rows.num_rows());
    for i in 0..rows.num_rows() {
        let forced = changes.is_unconditional(i) || order.as_ref().is_some_and(|o| !o.has_value(i));
        last.entry(keys.row(i))
            .and_modify(|(j, unconditional)| {
                let replaces = match &order {
                    Some(o) => forced || o.replaces(i, *j as usize),
                    None => true,
                };
                if replaces {
                    *j = i as u32;
                }
                *unconditional |= forced;
            })
            .or_insert((i as u32, forced));
    }
    let mut keep: Vec<(u32, bool)> = last.into_values().collect();
    keep.sort_unstable();
    let unconditional = order
        .is_some()
        .then(|| keep.iter().map(|(_, u)| Some(*u)).collect::<BooleanArray>());
    let keep = UInt32Array::from_iter_values(keep.iter().map(|(i, _)| *i));
    let deleted = take(&changes.deleted, &keep, None)?;
    Ok(Changes {
        rows: take_record_batch(rows, &keep)?,
        deleted: deleted
            .as_any()
            .downcast_ref::<BooleanArray>()
            .cloned()
            .ok_or_else(|| ArrowError::CastError("deleted flags".into()))?,
        unconditional,
    })
}

/// Keep a growing list of changes (in the order read) reduced to the last
/// change per key, so it holds about its distinct keys rather than every
/// change. `reduced` is how many rows the last reduction left (`list[0]`).
/// The list is reduced again once the rows added since are at least as many
/// as that and at least `min_rows`: each change then goes through a handful
/// of reductions in all, however large the list grows. True when it reduced.
pub fn reduce_growing(
    list: &mut Vec<Changes>,
    reduced: &mut usize,
    key: &[String],
    order_by: Option<&str>,
    min_rows: usize,
) -> Result<bool, ChangesError> {
    let rows: usize = list.iter().map(|c| c.rows.num_rows()).sum();
    if rows.saturating_sub(*reduced) < (*reduced).max(min_rows) || list.is_empty() {
        return Ok(false);
    }
    let one = reduce(key, order_by, &Changes::concat(list)?)?;
    *reduced = one.rows.num_rows();
    *list = vec![one];
    Ok(true)
}

/// The changes' order by their `order_by` column: two changes compare only
/// where both have a value (a tombstone has none).
#[derive(Debug)]
pub struct Order {
    rows: Rows,
    values: ArrayRef,
}

impl Order {
    /// The order of `rows` by column `order_by`; an error when it is missing.
    pub fn new(rows: &RecordBatch, order_by: &str) -> Result<Self, ChangesError> {
        let c = rows
            .column_by_name(order_by)
            .ok_or_else(|| ChangesError::MissingColumn {
                column: order_by.to_owned(),
            })?;
        let field = SortField::new(c.data_type().clone());
        let rows = RowConverter::new(vec![field])?.convert_columns(std::slice::from_ref(c))?;
        Ok(Self {
            rows,
            values: c.clone(),
        })
    }

    /// Whether change `i` has an order value.
    pub fn has_value(&self, i: usize) -> bool {
        self.values.is_valid(i)
    }

    /// How change `i`'s order value compares with change `j`'s; `None` when
    /// either has none.
    pub fn compare(&self, i: usize, j: usize) -> Option<std::cmp::Ordering> {
        (self.has_value(i) && self.has_value(j)).then(|| self.rows.row(i).cmp(&self.rows.row(j)))
    }

    /// Whether change `i`, read after change `j` of the same key, replaces it:
    /// unless both have a value and `i`'s is the smaller.
    pub fn replaces(&self, i: usize, j: usize) -> bool {
        self.compare(i, j).is_none_or(std::cmp::Ordering::is_ge)
    }
}

fn non_null_columns(rows: &RecordBatch, names: &[String]) -> Result<Vec<ArrayRef>, ChangesError> {
    names
        .iter()
        .map(|k| {
            let c = rows
                .column_by_name(k)
                .ok_or_else(|| ChangesError::MissingColumn { column: k.clone() })?;
            if c.null_count() > 0 {
                return Err(ChangesError::NullKey {
                    column: k.clone(),
                    count: c.null_count(),
                });
            }
            Ok(c.clone())
        })
        .collect()
}

fn sort_fields(rows: &RecordBatch, names: &[String]) -> Result<Vec<SortField>, ChangesError> {
    Ok(non_null_columns(rows, names)?
        .iter()
        .map(|c| SortField::new(c.data_type().clone()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::arrow::array::{Int64Array, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn changes(ids: &[i64], vals: &[&str], deleted: &[bool]) -> Changes {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from(vals.to_vec())),
            ],
        )
        .unwrap();
        Changes::new(rows, BooleanArray::from(deleted.to_vec()))
    }

    fn as_tuples(c: &Changes) -> Vec<(i64, String, bool)> {
        let ids = c
            .rows
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let vs = c
            .rows
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        (0..c.rows.num_rows())
            .map(|i| (ids.value(i), vs.value(i).to_owned(), c.deleted.value(i)))
            .collect()
    }

    #[test]
    fn a_window_reduces_to_the_last_change_of_each_key() {
        let c = changes(
            &[1, 2, 1, 3, 2, 1],
            &["a", "b", "a2", "c", "b-del", "a3"],
            &[false, false, false, false, true, false],
        );
        let r = reduce(&["id".into()], None, &c).unwrap();
        assert_eq!(
            as_tuples(&r),
            vec![
                (3, "c".into(), false),
                (2, "b-del".into(), true),
                (1, "a3".into(), false)
            ]
        );
    }

    #[test]
    fn a_growing_list_reduced_as_it_grows_ends_as_one_reduction_of_it_all() {
        let key = ["id".to_owned()];
        let (mut list, mut reduced, mut reductions) = (Vec::new(), 0usize, 0);
        let mut all = Vec::new();
        for chunk in 0..40i64 {
            // Chunk i changes keys 10i.. 10i+9 (mod 64), the last of them a delete.
            let ids: Vec<i64> = (0..10).map(|j| (chunk * 10 + j) % 64).collect();
            let values: Vec<String> = (0..10).map(|j| format!("v{chunk}-{j}")).collect();
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            let deletes: Vec<bool> = (0..10).map(|j| j == 9).collect();
            let c = changes(&ids, &values, &deletes);
            all.push(c.clone());
            list.push(c);
            if reduce_growing(&mut list, &mut reduced, &key, None, 50).unwrap() {
                reductions += 1;
                assert_eq!(list.len(), 1);
                assert!(reduced <= 64, "one row per key: {reduced}");
            }
            // At most one reduction's rows (one per key) and fewer new ones
            // than that (or than 50) since.
            let held: usize = list.iter().map(|c| c.rows.num_rows()).sum();
            assert!(held < 2 * 64, "held {held} rows after chunk {chunk}");
        }
        // 400 changes of 64 keys: reduced when 50, then 64 more had come.
        assert!((5..=8).contains(&reductions), "{reductions} reductions");
        let whole = reduce(&key, None, &Changes::concat(&all).unwrap()).unwrap();
        let grown = reduce(&key, None, &Changes::concat(&list).unwrap()).unwrap();
        let sorted = |c: &Changes| {
            let mut t = as_tuples(c);
            t.sort();
            t
        };
        assert_eq!(sorted(&grown), sorted(&whole));
        assert!(sorted(&whole).iter().any(|(_, _, deleted)| *deleted));
    }

    #[test]
    fn a_key_that_is_missing_or_null_is_refused() {
        let c = changes(&[1], &["a"], &[false]);
        let err = reduce(&["nope".into()], None, &c).unwrap_err().to_string();
        assert!(err.contains("`nope`"), "{err}");
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let rows = RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(vec![Some(1), None]))],
        )
        .unwrap();
        let c = Changes::new(rows, BooleanArray::from(vec![false, false]));
        let err = reduce(&["id".into()], None, &c).unwrap_err().to_string();
        assert!(err.contains("null in 1 change"), "{err}");
    }

    #[test]
    fn a_compound_key_is_one_key() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, false),
            Field::new("b", DataType::Utf8, false),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 1, 1])),
                Arc::new(StringArray::from(vec!["x", "y", "x"])),
            ],
        )
        .unwrap();
        let c = Changes::new(rows, BooleanArray::from(vec![false, false, true]));
        let r = reduce(&["a".into(), "b".into()], None, &c).unwrap();
        assert_eq!(r.rows.num_rows(), 2);
        assert_eq!(r.deleted, BooleanArray::from(vec![false, true]));
    }

    #[test]
    fn with_an_order_the_newest_change_of_a_key_wins_wherever_it_was_read() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
            Field::new("lsn", DataType::Int64, false),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 1, 2, 2, 2])),
                Arc::new(StringArray::from(vec!["new", "old", "a", "b", "b-again"])),
                Arc::new(Int64Array::from(vec![10, 5, 1, 7, 7])),
            ],
        )
        .unwrap();
        let c = Changes::new(rows, BooleanArray::from(vec![false; 5]));
        let r = reduce(&["id".into()], Some("lsn"), &c).unwrap();
        // id 1: the change at lsn 10 though read first; id 2: the last of the equals.
        assert_eq!(
            as_tuples(&r),
            vec![(1, "new".into(), false), (2, "b-again".into(), false)]
        );
        let err = reduce(&["id".into()], Some("nope"), &c)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`nope`"), "{err}");
    }

    /// (id, v, lsn) changes; `v = None` deletes.
    fn ordered(c: &[(i64, Option<&str>, Option<i64>)]) -> Changes {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
            Field::new("lsn", DataType::Int64, true),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(c.iter().map(|c| c.0))),
                Arc::new(StringArray::from_iter(c.iter().map(|c| c.1))),
                Arc::new(Int64Array::from_iter(c.iter().map(|c| c.2))),
            ],
        )
        .unwrap();
        Changes::new(rows, c.iter().map(|c| Some(c.1.is_none())).collect())
    }

    /// (id, v or "-" for a delete, unconditional) of each reduced change.
    fn kept(c: &Changes) -> Vec<(i64, String, bool)> {
        let ids = c
            .rows
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let vs = c
            .rows
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        (0..c.rows.num_rows())
            .map(|i| {
                let v = if c.deleted.value(i) { "-" } else { vs.value(i) };
                (ids.value(i), v.to_owned(), c.is_unconditional(i))
            })
            .collect()
    }

    /// Issue 22, case 2: a change with no order value (a tombstone has none)
    /// used to sort as the newest, so a tombstone followed by a re-insert with
    /// an order value ended deleted in one window, present across two. Where
    /// either has no value the later read wins.
    #[test]
    fn a_change_with_no_order_value_never_beats_a_later_one() {
        let c = ordered(&[
            (1, Some("a"), Some(5)),
            (1, None, None),
            (2, Some("b-none"), None),
            (2, Some("b-3"), Some(3)),
            (3, None, None),
            (3, Some("c-12"), Some(12)),
        ]);
        let r = reduce(&["id".into()], Some("lsn"), &c).unwrap();
        assert_eq!(
            kept(&r),
            vec![
                (1, "-".into(), true),
                (2, "b-3".into(), true),
                (3, "c-12".into(), true)
            ]
        );
    }

    /// Where both have a value they are compared; a window with no change
    /// lacking one is applied to the table's row by the same comparison.
    #[test]
    fn order_values_compare_only_where_both_are_present() {
        let c = ordered(&[
            (1, Some("a10"), Some(10)),
            (1, Some("a5"), Some(5)),
            (2, Some("b1"), Some(1)),
            (2, Some("b1-again"), Some(1)),
        ]);
        let r = reduce(&["id".into()], Some("lsn"), &c).unwrap();
        assert_eq!(
            kept(&r),
            vec![(1, "a10".into(), false), (2, "b1-again".into(), false)]
        );
        // Without an order every change is the newest: no flags at all.
        let r = reduce(&["id".into()], None, &c).unwrap();
        assert!(r.unconditional.is_none());
    }

    /// The state a key ends in when `changes` are applied one by one to an
    /// absent row by the ordering rule: the reference the reductions match.
    fn folded(changes: &[(i64, Option<&str>, Option<i64>)]) -> Option<(String, Option<i64>)> {
        let mut row: Option<(Option<&str>, Option<i64>)> = None;
        for &(_, v, lsn) in changes {
            let replaces = match (row.and_then(|r| r.1), lsn) {
                (Some(t), Some(s)) => s >= t,
                _ => true,
            };
            if replaces || row.is_none() {
                row = Some((v, lsn));
            }
        }
        row.and_then(|(v, l)| v.map(|v| (v.to_owned(), l)))
    }

    /// A window reduced whole, or in two reductions of its parts (as a
    /// growing window is), keeps the same change with the same flag; and the
    /// kept change is the one the change-by-change fold ends in.
    #[test]
    fn reductions_of_parts_keep_what_a_reduction_of_the_whole_keeps() {
        type Sequence<'a> = &'a [(i64, Option<&'a str>, Option<i64>)];
        let sequences: [Sequence<'_>; 4] = [
            &[
                (1, Some("a"), Some(10)),
                (1, None, None),
                (1, Some("c"), Some(5)),
            ],
            &[
                (1, Some("a"), Some(10)),
                (1, Some("x"), None),
                (1, Some("c"), Some(5)),
            ],
            &[
                (1, Some("a"), Some(10)),
                (1, Some("b"), Some(7)),
                (1, None, Some(12)),
            ],
            &[
                (1, None, Some(3)),
                (1, Some("b"), Some(2)),
                (1, Some("c"), None),
                (1, Some("d"), Some(1)),
            ],
        ];
        let key = ["id".to_owned()];
        for seq in sequences {
            let whole = reduce(&key, Some("lsn"), &ordered(seq)).unwrap();
            for k in 1..seq.len() {
                let first = reduce(&key, Some("lsn"), &ordered(&seq[..k])).unwrap();
                let both = Changes::concat(&[first, ordered(&seq[k..])]).unwrap();
                let parts = reduce(&key, Some("lsn"), &both).unwrap();
                assert_eq!(kept(&parts), kept(&whole), "{seq:?} split at {k}");
            }
            let (_, v, _) = kept(&whole)[0].clone();
            let expected = folded(seq).map_or("-".to_owned(), |(v, _)| v);
            assert_eq!(v, expected, "{seq:?}");
        }
    }
}
