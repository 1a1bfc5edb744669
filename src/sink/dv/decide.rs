//! What a merge-on-read window does to each row it finds and each change it
//! has: the same rules as the copy-on-write MERGE's clauses
//! ([`crate::sink::upsert::merge`]), decided in memory. A live row of a
//! changed key is deleted when the change is at least as new as it (or either
//! has no order value, or the change is unconditional); the change is written
//! when it is not a deletion and it replaced a row, or its key had no live
//! row and no newer delete is remembered for it.

use deltalake::arrow::array::{Array, ArrayRef, BooleanArray, UInt64Array, new_null_array};
use deltalake::arrow::compute::kernels::cmp::gt_eq;
use deltalake::arrow::compute::{cast, concat, take};
use deltalake::arrow::datatypes::DataType;
use deltalake::arrow::error::ArrowError;

use super::positions::{Hit, Located};
use crate::sink::upsert::MergePlan;

/// A window's decisions.
#[derive(Debug, PartialEq)]
pub struct Decision {
    /// Per file of [`Located::files`], the rows to delete.
    pub deletes: Vec<Vec<u64>>,
    /// Per change, whether it is written as a new row.
    pub write: BooleanArray,
}

/// Decide `located`'s hits and `plan`'s changes.
pub fn decide(plan: &MergePlan, located: &Located) -> Result<Decision, ArrowError> {
    let n = plan.changes.rows.num_rows();
    let newer = newer(plan, located)?;
    let mut deletes = vec![Vec::new(); located.files.len()];
    let (mut matched, mut replaced) = (vec![false; n], vec![false; n]);
    for (hit, newer) in located.hits.iter().zip(newer) {
        matched[hit.change] = true;
        if newer {
            replaced[hit.change] = true;
            deletes[hit.file].push(hit.row);
        }
    }
    let kept = kept(plan)?;
    let write = (0..n)
        .map(|c| {
            let deletion = plan.changes.deleted.value(c);
            !deletion && (replaced[c] || (!matched[c] && kept[c]))
        })
        .collect::<BooleanArray>();
    Ok(Decision { deletes, write })
}

/// Whether the change of each hit is at least as new as the row it hit.
fn newer(plan: &MergePlan, located: &Located) -> Result<Vec<bool>, ArrowError> {
    let hits = &located.hits;
    let Some(order_by) = plan.order_by.as_deref() else {
        return Ok(vec![true; hits.len()]);
    };
    let Some(theirs) = plan.changes.rows.column_by_name(order_by) else {
        return Ok(vec![true; hits.len()]);
    };
    let changes = UInt64Array::from_iter_values(hits.iter().map(|h| h.change as u64));
    let theirs = take(theirs.as_ref(), &changes, None)?;
    let ours = table_order(located, theirs.data_type())?;
    let unconditional = |h: &Hit| {
        plan.changes
            .unconditional
            .as_ref()
            .is_some_and(|u| u.value(h.change))
    };
    let ge = gt_eq(&theirs, &ours)?;
    Ok(hits
        .iter()
        .enumerate()
        .map(|(i, h)| unconditional(h) || ge.is_null(i) || ge.value(i))
        .collect())
}

/// The order value of each hit's row, in the changes' type.
fn table_order(located: &Located, to: &DataType) -> Result<ArrayRef, ArrowError> {
    let mut parts: Vec<ArrayRef> = Vec::new();
    let mut at = 0;
    while at < located.hits.len() {
        let file = located.hits[at].file;
        let end = at
            + located.hits[at..]
                .iter()
                .take_while(|h| h.file == file)
                .count();
        let rows = UInt64Array::from_iter_values(located.hits[at..end].iter().map(|h| h.row));
        let part = match &located.files[file].keys.order {
            Some(order) => cast(&take(order.as_ref(), &rows, None)?, to)?,
            None => new_null_array(to, rows.len()),
        };
        parts.push(part);
        at = end;
    }
    if parts.is_empty() {
        return Ok(new_null_array(to, 0));
    }
    let refs: Vec<&dyn Array> = parts.iter().map(|p| p.as_ref()).collect();
    concat(&refs)
}

/// Whether each change of a key with no live row may insert it: not when the
/// memory of deletes holds a newer delete of the key.
fn kept(plan: &MergePlan) -> Result<Vec<bool>, ArrowError> {
    let n = plan.changes.rows.num_rows();
    let (Some(order_by), Some(deleted_order)) =
        (plan.order_by.as_deref(), plan.deleted_order.as_ref())
    else {
        return Ok(vec![true; n]);
    };
    let Some(theirs) = plan.changes.rows.column_by_name(order_by) else {
        return Ok(vec![true; n]);
    };
    let remembered = cast(deleted_order, theirs.data_type())?;
    let ge = gt_eq(theirs, &remembered)?;
    Ok((0..n)
        .map(|c| {
            plan.changes
                .unconditional
                .as_ref()
                .is_some_and(|u| u.value(c))
                || ge.is_null(c)
                || ge.value(c)
        })
        .collect())
}
