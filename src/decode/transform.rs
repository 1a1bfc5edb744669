//! Derived columns and row filters: DataFusion SQL expressions evaluated on each
//! decoded Arrow batch, before it is written.
//!
//! ```toml
//! [table]
//! filter = "kind <> 'ping'"                 # rows for which this is not true are dropped
//! partition_by = ["day"]
//! [table.derived_columns]
//! day = "CAST(ts AS DATE)"                  # a partition column computed from the record
//! ```
//!
//! Expressions see the decoded columns (record fields and Kafka metadata columns),
//! not each other. They are planned once per table schema into DataFusion physical
//! expressions, so a batch costs one vectorized evaluation per expression. A
//! filtered-out record is accounted for (its offset is committed) but written
//! nowhere. A record for which an expression fails (a cast that does not parse, a
//! division by zero) is rejected with the column and the error, and the rest of its
//! batch is written.

use crate::decode::Reason;
use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use deltalake::arrow::compute::{cast, concat_batches, filter_record_batch};
use deltalake::arrow::datatypes::{Field, SchemaRef};
use deltalake::datafusion::common::DFSchema;
use deltalake::datafusion::physical_expr::PhysicalExpr;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::kernel::StructField;

use crate::decode::{Decoded, RejectKind, Rejected};
use crate::schema::TableSchema;

/// What the config asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransformSpec {
    /// Derived columns: (name, SQL expression), in column order.
    pub columns: Vec<(String, String)>,
    /// Rows to keep.
    pub filter: Option<String>,
}

impl TransformSpec {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty() && self.filter.is_none()
    }
}

fn plan(sql: &str, input: &SchemaRef) -> Result<Arc<dyn PhysicalExpr>, Reason> {
    let ctx = SessionContext::new();
    let df = DFSchema::try_from(input.as_ref().clone()).map_err(|e| Reason::from(e.to_string()))?;
    let expr = ctx
        .parse_sql_expr(sql, &df)
        .map_err(|e| Reason::from(e.to_string()))?;
    ctx.create_physical_expr(expr, &df)
        .map_err(|e| Reason::from(e.to_string()))
}

/// The table fields of the derived columns, typed by planning the expressions
/// against the decoded columns `input`.
pub fn derived_fields(spec: &TransformSpec, input: &SchemaRef) -> Result<Vec<StructField>, Reason> {
    spec.columns
        .iter()
        .map(|(name, sql)| {
            let e = plan(sql, input)
                .map_err(|e| Reason::from(format!("derived column `{name}` = {sql}: {e}")))?;
            let t = e
                .data_type(input)
                .map_err(|e| Reason::from(e.to_string()))?;
            let field = Field::new(name, t, true);
            let delta = crate::schema::evolve::delta_type(&field, name)
                .map_err(|e| Reason::from(format!("derived column `{name}` = {sql}: {e}")))?;
            Ok(StructField::new(name, delta, true))
        })
        .collect()
}

/// Planned expressions for one table schema.
#[derive(Debug)]
pub struct Transform {
    columns: Vec<(String, Arc<dyn PhysicalExpr>)>,
    filter: Option<Arc<dyn PhysicalExpr>>,
    filter_sql: String,
    output: SchemaRef,
}

impl Transform {
    /// Plan `spec` for batches of `schema.decoded_arrow`; `None` when there is
    /// nothing to do.
    pub fn new(spec: &TransformSpec, schema: &TableSchema) -> Result<Option<Self>, Reason> {
        if spec.is_empty() {
            return Ok(None);
        }
        let input = &schema.decoded_arrow;
        let columns = spec
            .columns
            .iter()
            .map(|(name, sql)| {
                plan(sql, input)
                    .map(|e| (name.clone(), e))
                    .map_err(|e| Reason::from(format!("derived column `{name}` = {sql}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let filter = spec
            .filter
            .as_deref()
            .map(|sql| plan(sql, input).map_err(|e| Reason::from(format!("filter `{sql}`: {e}"))))
            .transpose()?;
        Ok(Some(Self {
            columns,
            filter,
            filter_sql: spec.filter.clone().unwrap_or_default(),
            output: schema.arrow.clone(),
        }))
    }

    /// Filter the decoded rows and add the derived columns. Records whose
    /// expressions fail are moved to `rejected`.
    pub fn apply(&self, mut d: Decoded) -> Decoded {
        let Some(batch) = d.batch.take() else {
            return d;
        };
        match self.apply_batch(&batch) {
            Ok((out, keep)) => {
                d.rows = d
                    .rows
                    .iter()
                    .zip(&keep)
                    .filter_map(|(r, k)| k.then_some(*r))
                    .collect();
                d.batch = (out.num_rows() > 0).then_some(out);
            }
            Err(_) => {
                // Some row fails: find which, one row at a time.
                let mut rows = Vec::with_capacity(d.rows.len());
                let mut batches = Vec::new();
                for (i, &r) in d.rows.iter().enumerate() {
                    match self.apply_batch(&batch.slice(i, 1)) {
                        Ok((out, keep)) => {
                            if keep[0] {
                                rows.push(r);
                                batches.push(out);
                            }
                        }
                        Err(reason) => d.rejected.push(Rejected {
                            index: r,
                            kind: RejectKind::Transform,
                            reason: reason.0,
                        }),
                    }
                }
                d.rejected.sort_by_key(|r| r.index);
                d.rows = rows;
                d.batch = concat_batches(&self.output, &batches)
                    .ok()
                    .filter(|b| b.num_rows() > 0);
            }
        }
        d
    }

    fn apply_batch(&self, batch: &RecordBatch) -> Result<(RecordBatch, Vec<bool>), Reason> {
        let n = batch.num_rows();
        let keep: Vec<bool> = match &self.filter {
            None => vec![true; n],
            Some(f) => {
                let v = f
                    .evaluate(batch)
                    .and_then(|v| v.into_array(n))
                    .map_err(|e| Reason::from(format!("filter `{}`: {e}", self.filter_sql)))?;
                let mask = v
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| format!("filter `{}` is not a boolean", self.filter_sql))?;
                (0..n).map(|i| mask.is_valid(i) && mask.value(i)).collect()
            }
        };
        // Filter first: a dropped row's derived values are never computed.
        let kept = if keep.iter().all(|k| *k) {
            batch.clone()
        } else {
            filter_record_batch(batch, &BooleanArray::from(keep.clone()))
                .map_err(|e| Reason::from(e.to_string()))?
        };
        let rows = kept.num_rows();
        let mut derived: Vec<(String, ArrayRef)> = Vec::with_capacity(self.columns.len());
        for (name, e) in &self.columns {
            let target = self
                .output
                .field_with_name(name)
                .map_err(|e| Reason::from(e.to_string()))?
                .data_type();
            let v = e
                .evaluate(&kept)
                .and_then(|v| v.into_array(rows))
                .map_err(|e| Reason::from(format!("derived column `{name}`: {e}")))?;
            let v = cast(&v, target)
                .map_err(|e| Reason::from(format!("derived column `{name}`: {e}")))?;
            derived.push((name.clone(), v));
        }
        let columns = self
            .output
            .fields()
            .iter()
            .map(|f| match derived.iter().position(|(n, _)| n == f.name()) {
                Some(i) => Ok(derived[i].1.clone()),
                None => kept
                    .column_by_name(f.name())
                    .cloned()
                    .ok_or_else(|| format!("column `{}` missing from the batch", f.name())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = RecordBatch::try_new(self.output.clone(), columns)
            .map_err(|e| Reason::from(e.to_string()))?;
        Ok((out, keep))
    }
}

#[cfg(test)]
mod tests {
    use deltalake::arrow::array::{AsArray, StringArray};
    use deltalake::arrow::datatypes::Int32Type;

    use super::*;
    use crate::schema::MetadataColumns;

    #[test]
    fn failing_rows_are_rejected_with_the_column_and_the_rest_kept() {
        let record = crate::schema::parse_schema_json(
            r#"{"type":"struct","fields":[{"name":"s","type":"string","nullable":true,"metadata":{}}]}"#,
        )
        .unwrap();
        let base = TableSchema::new(&record, &MetadataColumns::default()).unwrap();
        let spec = TransformSpec {
            columns: vec![("n".into(), "CAST(s AS INT)".into())],
            filter: Some("s <> 'skip'".into()),
        };
        let fields = derived_fields(&spec, &base.decoded_arrow).unwrap();
        assert_eq!(
            serde_json::to_value(fields[0].data_type()).unwrap(),
            "integer"
        );
        let schema = base.with_derived(fields).unwrap();
        let t = Transform::new(&spec, &schema).unwrap().unwrap();
        let batch = RecordBatch::try_new(
            schema.decoded_arrow.clone(),
            vec![Arc::new(StringArray::from(vec!["1", "x", "skip", "4"]))],
        )
        .unwrap();
        let out = t.apply(Decoded {
            batch: Some(batch),
            rows: vec![10, 11, 12, 13],
            rejected: vec![],
        });
        assert_eq!(out.rows, [10, 13]);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].index, 11);
        assert!(
            out.rejected[0].reason.contains("derived column `n`"),
            "{}",
            out.rejected[0].reason
        );
        let n = out.batch.unwrap();
        assert_eq!(
            n.column_by_name("n")
                .unwrap()
                .as_primitive::<Int32Type>()
                .values()
                .to_vec(),
            [1, 4]
        );
        assert!(
            Transform::new(
                &TransformSpec {
                    columns: vec![("bad".into(), "no_such_column + 1".into())],
                    filter: None
                },
                &schema
            )
            .unwrap_err()
            .0
            .contains("derived column `bad`")
        );
    }
}
