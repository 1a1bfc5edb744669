//! Tables and rows the deletion-vector tests start from.

use super::*;

/// A local table `(id bigint not null)` holding one file of ids 0..10.
pub(super) async fn one_file_table(dir: &tempfile::TempDir) -> deltalake::DeltaTable {
    use deltalake::arrow::array::{Int64Array, RecordBatch};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    use deltalake::kernel::{DataType as DeltaType, PrimitiveType, StructField};
    use deltalake::writer::{DeltaWriter, RecordBatchWriter};
    let url = Url::from_directory_path(dir.path()).unwrap();
    let mut t = deltalake::DeltaTable::try_from_url(url)
        .await
        .unwrap()
        .create()
        .with_columns([StructField::new(
            "id",
            DeltaType::Primitive(PrimitiveType::Long),
            false,
        )])
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..10))]).unwrap();
    let mut w = RecordBatchWriter::for_table(&t).unwrap();
    w.write(batch).await.unwrap();
    w.flush_and_commit(&mut t).await.unwrap();
    t
}

pub(super) async fn ids(t: &deltalake::DeltaTable) -> Vec<i64> {
    use deltalake::arrow::array::Int64Array;
    crate::sink::table::query(t, "SELECT id FROM t ORDER BY id")
        .await
        .unwrap()
        .iter()
        .flat_map(|b| {
            let c = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            c.values().to_vec()
        })
        .collect()
}

/// A vector committed for `path` of `t` (with `rows` physical rows).
pub(super) async fn commit_vector(t: &mut deltalake::DeltaTable, path: &str, v: &RoaringTreemap) {
    use deltalake::kernel::Action;
    use deltalake::kernel::transaction::CommitBuilder;
    use deltalake::protocol::DeltaOperation;
    use object_store::ObjectStoreExt as _;
    #[allow(deprecated)]
    let add = t
        .snapshot()
        .unwrap()
        .log_data()
        .iter()
        .map(|f| f.add_action())
        .find(|a| a.path == path)
        .unwrap();
    let rows = rows_by_path([&add])[&add.path];
    let file = write_file("", uuid::Uuid::new_v4(), std::slice::from_ref(v)).unwrap();
    t.log_store()
        .object_store(None)
        .put(
            &deltalake::Path::from(file.path.as_str()),
            file.bytes.into(),
        )
        .await
        .unwrap();
    let (remove, new) = replace(&add, file.descriptors[0].clone(), v, rows, 1).unwrap();
    let done = CommitBuilder::default()
        .with_actions(vec![Action::Remove(remove), Action::Add(new)])
        .build(
            Some(t.snapshot().unwrap()),
            t.log_store(),
            DeltaOperation::Delete { predicate: None },
        )
        .await
        .unwrap();
    t.state = Some(done.snapshot());
}

/// `(id, v)` rows as a batch.
pub(super) fn id_v(rows: &[(i64, &str)]) -> deltalake::arrow::array::RecordBatch {
    use deltalake::arrow::array::{Int64Array, RecordBatch, StringArray};
    use deltalake::arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("v", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
        ],
    )
    .unwrap()
}

/// The table's `(id, v)` rows, by id.
pub(super) async fn id_v_rows(t: &deltalake::DeltaTable) -> Vec<(i64, String)> {
    use deltalake::arrow::array::{Int64Array, StringArray};
    let out = crate::sink::table::query(t, "SELECT id, v FROM t ORDER BY id")
        .await
        .unwrap();
    out.iter()
        .flat_map(|b| {
            let vs = deltalake::arrow::compute::cast(
                b.column(1),
                &deltalake::arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let ids = b
                .column(0)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .clone();
            let vs = vs.as_any().downcast_ref::<StringArray>().unwrap().clone();
            (0..b.num_rows()).map(move |i| (ids.value(i), vs.value(i).to_owned()))
        })
        .collect()
}
