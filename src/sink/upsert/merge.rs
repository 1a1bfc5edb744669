//! The MERGE of a window's reduced changes into the table, on the key, with
//! the ordering rule and the memory of deletes in its conditions (see
//! [`crate::decode::changes::reduce`]).

use std::collections::HashMap;

use deltalake::arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use deltalake::arrow::datatypes::{DataType, Field};
use deltalake::arrow::error::ArrowError;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::{DeltaTable, DeltaTableError};

use super::{Changes, MergePlan};
use crate::decode::changes::{DELETED, DELETED_ORDER, UNCONDITIONAL, with_columns};

/// The MERGE of the plan's changes into `table` on the key. With `order_by`, a
/// matched row is replaced or deleted only by a change at least as new as it
/// (or one with no order value).
pub(crate) fn merge(
    table: &DeltaTable,
    plan: &MergePlan,
) -> Result<deltalake::operations::merge::MergeBuilder, DeltaTableError> {
    let key = &plan.key;
    let source = with_flags(
        &plan.changes,
        plan.order_by.is_some(),
        plan.deleted_order.as_ref(),
    )
    .map_err(DeltaTableError::from)?;
    let df = SessionContext::new().read_batch(source)?;
    let on = key
        .iter()
        .map(|k| format!("t.{q} = s.{q}", q = quote(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    // The table's columns that the changes have: a column added to the table
    // after they were decoded (another replica, another engine) keeps its value
    // in updated rows and is null in inserted ones.
    let have = plan.changes.rows.schema();
    let columns: Vec<String> = table
        .snapshot()?
        .schema()
        .fields()
        .map(|f| f.name().clone())
        .filter(|c| have.field_with_name(c).is_ok())
        .collect();
    let Conditions {
        deleted,
        replaced,
        kept,
    } = Conditions::of(plan);
    let mut builder = table
        .clone()
        .merge(df, on)
        .with_source_alias("s")
        .with_target_alias("t")
        .with_session_state(merge_session()?);
    if let Some(p) = &plan.parquet {
        builder = builder.with_writer_properties(p.clone());
    }
    builder
        .when_matched_delete(|d| d.predicate(deleted))?
        .when_matched_update(|u| {
            columns.iter().fold(u.predicate(replaced), |u, c| {
                u.update(c.as_str(), format!("s.{}", quote(c)))
            })
        })?
        .when_not_matched_insert(|i| {
            columns.iter().fold(i.predicate(kept.clone()), |i, c| {
                i.set(c.as_str(), format!("s.{}", quote(c)))
            })
        })
}

/// The MERGE's three clauses, as SQL over the source `s` and the target `t`.
#[derive(Debug, PartialEq, Eq)]
struct Conditions {
    /// A matched row is deleted.
    deleted: String,
    /// A matched row is replaced by the change.
    replaced: String,
    /// An absent key's change is inserted.
    kept: String,
}

impl Conditions {
    fn of(plan: &MergePlan) -> Self {
        // Where either side has no order value, or the window's change of the
        // key came after one without (see [`crate::decode::changes::reduce`]),
        // the change is the newer.
        let newer = plan.order_by.as_deref().map_or(String::new(), |o| {
            let o = quote(o);
            format!(
                " AND (s.{u} OR t.{o} IS NULL OR s.{o} IS NULL OR s.{o} >= t.{o})",
                u = quote(UNCONDITIONAL)
            )
        });
        // An absent key is inserted unless it was deleted by a newer change.
        let kept = match (plan.order_by.as_deref(), plan.deleted_order.as_ref()) {
            (Some(o), Some(_)) => format!(
                "NOT s.{d} AND (s.{u} OR s.{o} IS NULL OR s.{m} IS NULL OR s.{o} >= s.{m})",
                d = quote(DELETED),
                u = quote(UNCONDITIONAL),
                o = quote(o),
                m = quote(DELETED_ORDER)
            ),
            _ => format!("NOT s.{}", quote(DELETED)),
        };
        Self {
            deleted: format!("s.{}{newer}", quote(DELETED)),
            replaced: format!("NOT s.{}{newer}", quote(DELETED)),
            kept,
        }
    }
}

/// The session MERGEs run in: delta-rs' own, with one partition.
fn merge_session()
-> Result<std::sync::Arc<dyn deltalake::datafusion::catalog::Session>, DeltaTableError> {
    let overrides = HashMap::from([(
        "datafusion.execution.target_partitions".to_owned(),
        "1".to_owned(),
    )]);
    let ctx =
        deltalake::delta_datafusion::DeltaSessionContext::new_with_session_overrides(&overrides)?;
    Ok(std::sync::Arc::new(ctx.state()))
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The changes with the deletion flag (and, with an order, the unconditional
/// flag) as columns of their own.
fn with_flags(
    changes: &Changes,
    ordered: bool,
    deleted_order: Option<&ArrayRef>,
) -> Result<RecordBatch, ArrowError> {
    let mut flags: Vec<(Field, ArrayRef)> = vec![(
        Field::new(DELETED, DataType::Boolean, false),
        std::sync::Arc::new(changes.deleted.clone()),
    )];
    if ordered {
        let n = changes.rows.num_rows();
        let u = changes
            .unconditional
            .clone()
            .unwrap_or_else(|| BooleanArray::from(vec![false; n]));
        flags.push((
            Field::new(UNCONDITIONAL, DataType::Boolean, false),
            std::sync::Arc::new(u),
        ));
    }
    if let Some(m) = deleted_order {
        flags.push((
            Field::new(DELETED_ORDER, m.data_type().clone(), true),
            m.clone(),
        ));
    }
    with_columns(&changes.rows, flags)
}
