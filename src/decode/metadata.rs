//! The Kafka metadata columns (topic, partition, offset, timestamp, key, headers)
//! appended to decoded rows.

use super::*;

/// Append the configured Kafka metadata columns for `rows` of `chunk` to `values`,
/// in the table's column order.
pub(crate) fn append_metadata(
    schema: &TableSchema,
    values: RecordBatch,
    chunk: &RecordChunk,
    rows: &[usize],
) -> Result<RecordBatch, DecodeError> {
    let m: &MetadataColumns = &schema.metadata;
    let mut named: Vec<(&str, ArrayRef)> = values
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .zip(values.columns().iter().cloned())
        .collect();
    let records = || rows.iter().map(|&i| &chunk.records[i]);
    if let Some(name) = &m.topic {
        let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 8);
        for r in records() {
            b.append_value(&chunk.partitions[r.part as usize].tp.topic);
        }
        named.push((name, Arc::new(b.finish())));
    }
    if let Some(name) = &m.partition {
        let mut b = Int32Builder::with_capacity(rows.len());
        for r in records() {
            b.append_value(chunk.partitions[r.part as usize].tp.partition);
        }
        named.push((name, Arc::new(b.finish())));
    }
    if let Some(name) = &m.offset {
        let mut b = Int64Builder::with_capacity(rows.len());
        for r in records() {
            b.append_value(r.offset);
        }
        named.push((name, Arc::new(b.finish())));
    }
    if let Some(name) = &m.timestamp {
        let mut b = TimestampMicrosecondBuilder::with_capacity(rows.len()).with_timezone("UTC");
        for r in records() {
            b.append_option(r.timestamp_ms.map(|ms| ms.saturating_mul(1000)));
        }
        named.push((name, Arc::new(b.finish())));
    }
    if let Some(name) = &m.key {
        let mut b = BinaryBuilder::with_capacity(rows.len(), 0);
        for r in records() {
            b.append_option(chunk.key(r));
        }
        named.push((name, Arc::new(b.finish())));
    }
    if let Some(name) = &m.headers {
        named.push((name, headers_array(schema, name, chunk, rows)?));
    }
    let columns = schema
        .decoded_arrow
        .fields()
        .iter()
        .map(|f| {
            named
                .iter()
                .position(|(n, _)| *n == f.name())
                .map(|i| named.swap_remove(i).1)
                .ok_or_else(|| DecodeError::Layout {
                    column: f.name().clone(),
                    problem: "has no values",
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.decoded_arrow.clone(), columns).map_err(DecodeError::Assemble)
}

fn headers_array(
    schema: &TableSchema,
    name: &str,
    chunk: &RecordChunk,
    rows: &[usize],
) -> Result<ArrayRef, DecodeError> {
    let list_type = schema
        .arrow
        .field_with_name(name)
        .map_err(DecodeError::Assemble)?
        .data_type()
        .clone();
    let DataType::List(element) = list_type else {
        return Err(DecodeError::Layout {
            column: name.to_owned(),
            problem: "holds headers but is not a list",
        });
    };
    let DataType::Struct(fields) = element.data_type().clone() else {
        return Err(DecodeError::Layout {
            column: name.to_owned(),
            problem: "holds headers but is not a list of structs",
        });
    };
    let fields: Fields = fields;
    let entry = StructBuilder::new(
        fields.clone(),
        vec![
            Box::new(StringBuilder::new()),
            Box::new(BinaryBuilder::new()),
        ],
    );
    let element_field: Arc<Field> = element.clone();
    let mut list = ListBuilder::new(entry).with_field(element_field);
    for &i in rows {
        let r = &chunk.records[i];
        for h in &chunk.headers[r.headers.clone()] {
            let s = list.values();
            s.field_builder::<StringBuilder>(0)
                .expect("key builder")
                .append_value(&h.key);
            s.field_builder::<BinaryBuilder>(1)
                .expect("value builder")
                .append_option(h.value.clone().map(|v| &chunk.data[v]));
            s.append(true);
        }
        list.append(true);
    }
    Ok(Arc::new(list.finish()))
}

// ---------------------------------------------------------------------------
// Registry formats.
// ---------------------------------------------------------------------------
