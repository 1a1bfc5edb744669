//! The state an upsert table should hold (every key's last change), and its
//! comparison with the table's rows.

use std::collections::{HashMap, HashSet};

use deltalake::DeltaTable;
use deltalake::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::{DataType, Int32Type, UInt32Type};
use deltalake::arrow::error::ArrowError;
use deltalake::arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use futures::TryStreamExt as _;

use super::report::{Finding, Tally, render_key};
use super::{OFFSET, PART};
use crate::decode::changes::Order;
use crate::decode::changes::{Changes, ChangesError};
use crate::record::TopicPartition;

/// Every key's candidates for the row the table should hold.
pub(super) struct Expected {
    rows: RecordBatch,
    deleted: BooleanArray,
    key: Vec<String>,
    keys: RowConverter,
    compared: Vec<String>,
    values: RowConverter,
    value_rows: Rows,
    /// Key -> rows of `rows` that may be its state (more than one only for a
    /// key changed in several partitions).
    by_key: HashMap<OwnedRow, Vec<u32>>,
    pub(super) not_compared: Vec<String>,
}

fn fields_of(rows: &RecordBatch, names: &[String]) -> Result<Vec<SortField>, ChangesError> {
    names
        .iter()
        .map(|n| {
            let c = rows
                .column_by_name(n)
                .ok_or_else(|| ChangesError::MissingColumn { column: n.clone() })?;
            Ok(SortField::new(c.data_type().clone()))
        })
        .collect()
}

fn columns_of(batch: &RecordBatch, names: &[String]) -> Result<Vec<ArrayRef>, ChangesError> {
    names
        .iter()
        .map(|n| {
            batch
                .column_by_name(n)
                .cloned()
                .ok_or_else(|| ChangesError::MissingColumn { column: n.clone() })
        })
        .collect()
}

impl Expected {
    /// From each partition's last changes (with the carried columns).
    pub(super) fn new(
        key: &[String],
        order_by: Option<&str>,
        last: &[Changes],
    ) -> Result<Self, ChangesError> {
        let Changes { rows, deleted, .. } = Changes::concat(last)?;
        let schema = rows.schema();
        let keys = RowConverter::new(fields_of(&rows, key)?)?;
        let key_rows = keys.convert_columns(&columns_of(&rows, key)?)?;
        // The daemon's order, across partitions: a key's candidates are its
        // partitions' last changes with the greatest order value; where a
        // value is missing there is no order, and each may be the state.
        let order = order_by.map(|o| Order::new(&rows, o)).transpose()?;
        let mut by_key: HashMap<OwnedRow, Vec<u32>> = HashMap::with_capacity(rows.num_rows());
        for i in 0..rows.num_rows() {
            let c = by_key.entry(key_rows.row(i).owned()).or_default();
            let against = c.first().copied();
            match order
                .as_ref()
                .zip(against)
                .and_then(|(o, j)| o.compare(i, j as usize))
            {
                Some(std::cmp::Ordering::Greater) => *c = vec![i as u32],
                Some(std::cmp::Ordering::Less) => {}
                _ => c.push(i as u32),
            }
        }
        let (mut compared, mut not_compared) = (Vec::new(), Vec::new());
        for f in schema.fields() {
            let name = f.name();
            if name == PART || name == OFFSET {
                continue;
            }
            if RowConverter::supports_fields(&[SortField::new(f.data_type().clone())]) {
                compared.push(name.clone());
            } else {
                not_compared.push(name.clone());
            }
        }
        let values = RowConverter::new(fields_of(&rows, &compared)?)?;
        let value_rows = values.convert_columns(&columns_of(&rows, &compared)?)?;
        Ok(Self {
            rows,
            deleted,
            key: key.to_vec(),
            keys,
            compared,
            values,
            value_rows,
            by_key,
            not_compared,
        })
    }

    fn part_of(&self, row: u32) -> usize {
        self.rows.column_by_name(PART).map_or(usize::MAX, |c| {
            c.as_primitive::<UInt32Type>().value(row as usize) as usize
        })
    }

    fn is_deleted(&self, row: u32) -> bool {
        self.deleted.value(row as usize)
    }

    /// `batch`'s columns `names`, cast to the types of the expected rows.
    fn conform(
        &self,
        batch: &RecordBatch,
        names: &[String],
    ) -> Result<Vec<ArrayRef>, ChangesError> {
        let mine = columns_of(&self.rows, names)?;
        columns_of(batch, names)?
            .iter()
            .zip(&mine)
            .map(|(c, m)| {
                if c.data_type() == m.data_type() {
                    Ok(c.clone())
                } else {
                    Ok(cast(c, m.data_type())?)
                }
            })
            .collect()
    }

    /// Compare the table's rows with the expected state, into `tally`.
    pub(super) async fn compare(
        &self,
        table: &DeltaTable,
        partition_of: &PartitionOf<'_>,
        tally: &mut Tally,
    ) -> Result<(), ChangesError> {
        tally.compared = self.compared.clone();
        tally.not_compared = self.not_compared.clone();
        tally.several = self.by_key.values().filter(|c| c.len() > 1).count() as u64;
        let mut seen: HashSet<OwnedRow> = HashSet::with_capacity(self.by_key.len());
        let mut stream = scan(table).await?;
        while let Some(batch) = stream.try_next().await.map_err(external)? {
            let key_cols = self.conform(&batch, &self.key)?;
            let keys = self.keys.convert_columns(&key_cols)?;
            let values = self
                .values
                .convert_columns(&self.conform(&batch, &self.compared)?)?;
            for i in 0..batch.num_rows() {
                let k = keys.row(i).owned();
                let shown = || render_key(&self.key, &key_cols, i);
                let candidates = self.by_key.get(&k).map_or(&[][..], Vec::as_slice);
                let live: Vec<u32> = candidates
                    .iter()
                    .copied()
                    .filter(|&c| !self.is_deleted(c))
                    .collect();
                let part = live
                    .first()
                    .map_or_else(|| partition_of.row(&batch, i), |&c| self.part_of(c));
                if !seen.insert(k) {
                    tally.note(part, Finding::Duplicate, shown);
                } else if candidates.is_empty() {
                    // No change of the key in Kafka: retention may have taken
                    // them (unverifiable), or it should not be there.
                    tally.note(part, Finding::Extra, shown);
                } else if live.is_empty() {
                    // Kafka holds the key's last change, and it deletes it.
                    tally.note(part, Finding::Deleted, shown);
                } else if !live
                    .iter()
                    .any(|&c| self.value_rows.row(c as usize) == values.row(i))
                {
                    tally.note(part, Finding::Wrong, shown);
                }
            }
        }
        self.missing(&seen, tally)
    }

    /// Keys whose last change leaves a row that the table lacks.
    fn missing(&self, seen: &HashSet<OwnedRow>, tally: &mut Tally) -> Result<(), ChangesError> {
        let key_cols = columns_of(&self.rows, &self.key)?;
        for (k, candidates) in &self.by_key {
            // A key with a deleting candidate may rightly be absent.
            if candidates.iter().any(|&c| self.is_deleted(c)) {
                continue;
            }
            let part = self.part_of(candidates[0]);
            tally.note(part, Finding::Key, String::new);
            if !seen.contains(k) {
                let row = candidates[0] as usize;
                tally.note(part, Finding::Missing, || {
                    render_key(&self.key, &key_cols, row)
                });
            }
        }
        Ok(())
    }
}

/// Which partition a table row came from: by its topic and partition metadata
/// columns when the table has them.
pub(super) struct PartitionOf<'a> {
    pub(super) parts: &'a [TopicPartition],
    pub(super) topic: Option<&'a str>,
    pub(super) partition: Option<&'a str>,
}

impl PartitionOf<'_> {
    /// The index of the row's partition; out of range when it cannot be told.
    pub(super) fn row(&self, batch: &RecordBatch, i: usize) -> usize {
        let (Some(t), Some(p)) = (self.topic, self.partition) else {
            return usize::MAX;
        };
        let (Some(t), Some(p)) = (batch.column_by_name(t), batch.column_by_name(p)) else {
            return usize::MAX;
        };
        let (Ok(t), Ok(p)) = (cast(t, &DataType::Utf8), cast(p, &DataType::Int32)) else {
            return usize::MAX;
        };
        if t.is_null(i) || p.is_null(i) {
            return usize::MAX;
        }
        let tp = TopicPartition::new(
            t.as_string::<i32>().value(i),
            p.as_primitive::<Int32Type>().value(i),
        );
        self.parts
            .iter()
            .position(|x| *x == tp)
            .unwrap_or(usize::MAX)
    }
}

/// Every row of a table none of whose keys has a change: all extra.
pub(super) async fn all_extra(
    table: &DeltaTable,
    key: &[String],
    partition_of: &PartitionOf<'_>,
    tally: &mut Tally,
) -> Result<(), ChangesError> {
    let mut stream = scan(table).await?;
    while let Some(batch) = stream.try_next().await.map_err(external)? {
        let key_cols = columns_of(&batch, key)?;
        for i in 0..batch.num_rows() {
            let part = partition_of.row(&batch, i);
            tally.note(part, Finding::Extra, || render_key(key, &key_cols, i));
        }
    }
    Ok(())
}

fn external(e: impl std::error::Error + Send + Sync + 'static) -> ArrowError {
    ArrowError::ExternalError(Box::new(e))
}

/// The table's rows, streamed.
async fn scan(
    table: &DeltaTable,
) -> Result<deltalake::datafusion::physical_plan::SendableRecordBatchStream, ArrowError> {
    let ctx = deltalake::datafusion::prelude::SessionContext::new();
    table
        .update_datafusion_session(&ctx.state())
        .map_err(external)?;
    let provider = table.table_provider().await.map_err(external)?;
    ctx.register_table("t", provider).map_err(external)?;
    let df = ctx.sql("SELECT * FROM t").await.map_err(external)?;
    df.execute_stream().await.map_err(external)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use deltalake::arrow::array::{Int64Array, StringArray, UInt32Array};
    use deltalake::arrow::datatypes::{Field, Schema};
    use deltalake::kernel::{DataType as DeltaType, PrimitiveType, StructField};
    use deltalake::writer::DeltaWriter;

    use super::super::Counts;
    use super::*;

    /// A local `file://` table `(id bigint not null, v string)` holding `rows`.
    async fn table(dir: &tempfile::TempDir, rows: &[(i64, &str)]) -> DeltaTable {
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let t = DeltaTable::try_from_url(url)
            .await
            .unwrap()
            .create()
            .with_columns([
                StructField::new("id", DeltaType::Primitive(PrimitiveType::Long), false),
                StructField::new("v", DeltaType::Primitive(PrimitiveType::String), true),
            ])
            .await
            .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap();
        let mut w = deltalake::writer::RecordBatchWriter::for_table(&t).unwrap();
        w.write(batch).await.unwrap();
        let mut t = t;
        w.flush_and_commit(&mut t).await.unwrap();
        t
    }

    /// Partition 0's last changes `(id, v)`; `v = None` deletes.
    fn last_changes(c: &[(i64, Option<&str>)]) -> Changes {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
            Field::new(PART, DataType::UInt32, false),
        ]));
        let rows = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(c.iter().map(|c| c.0))),
                Arc::new(StringArray::from_iter(c.iter().map(|c| c.1))),
                Arc::new(UInt32Array::from(vec![0; c.len()])),
            ],
        )
        .unwrap();
        Changes::new(rows, c.iter().map(|c| Some(c.1.is_none())).collect())
    }

    /// verify's judging of an upsert table against a local table: each way a
    /// table can differ from its keys' last changes is found and counted, and
    /// the right rows are not.
    #[tokio::test]
    async fn every_kind_of_wrong_row_is_found_against_the_last_changes() {
        let dir = tempfile::tempdir().unwrap();
        let t = table(
            &dir,
            &[(1, "a"), (2, "B"), (3, "c"), (5, "e"), (1, "a"), (6, "f")],
        )
        .await;
        let last = last_changes(&[
            (1, Some("a")),
            (2, Some("b")),
            (3, None),
            (4, Some("d")),
            (6, Some("f")),
        ]);
        let expected = Expected::new(&["id".into()], None, &[last]).unwrap();
        let tp = TopicPartition::new("t", 0);
        let counts = HashMap::from([(
            tp.clone(),
            Counts {
                records: 10,
                changes: 10,
                rejected: 0,
                first_offset: Some(0),
            },
        )]);
        let stored = HashMap::from([(tp.clone(), Some(9))]);
        let mut tally = Tally::new(std::slice::from_ref(&tp), &stored, &counts);
        let parts = [tp];
        let partition_of = PartitionOf {
            parts: &parts,
            topic: None,
            partition: None,
        };
        expected
            .compare(&t, &partition_of, &mut tally)
            .await
            .unwrap();
        let p0 = &tally.parts[0];
        // Keys 1, 2, 4 and 6 have a live last change; 4's row is missing, 2's
        // holds another value, 1's is there twice; 6 is right.
        assert_eq!(
            (p0.keys, p0.missing_keys, p0.wrong_values, p0.duplicate_keys),
            (4, 1, 1, 1)
        );
        assert_eq!(p0.missing_sample, ["id=4"]);
        assert_eq!(p0.wrong_sample, ["id=2"]);
        // A row whose last change deletes it (3) and one with no change (5):
        // extra, on the line of rows with no partition to tell.
        let unknown = &tally.parts[1];
        assert_eq!(unknown.extra_keys, 2);
        assert_eq!(expected.not_compared, Vec::<String>::new());
    }
}
