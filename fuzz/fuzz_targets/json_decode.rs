//! JSON records into Arrow (arrow-json, with per-record isolation of bad input):
//! every record of a chunk comes out as a row or as a rejection with a reason,
//! never both, never neither, and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::schema::MetadataColumns;
use tributary::decode::JsonDecoder;
use tributary::record::{RecordChunk, TopicPartition};
use tributary::schema::{TableSchema, parse_schema_json};

fuzz_target!(|values: Vec<&[u8]>| {
    let record = parse_schema_json(tributary::ops::demo::DEMO_SCHEMA).unwrap();
    let meta = MetadataColumns {
        offset: Some("_offset".into()),
        ..MetadataColumns::default()
    };
    let mut decoder = JsonDecoder::new(TableSchema::new(&record, &meta).unwrap(), 16).unwrap();
    let chunk = RecordChunk::from_values(&TopicPartition::new("fuzz", 0), 0, values.iter().copied());
    let decoded = decoder.decode(&chunk, |_| true).expect("bad records are values, not errors");
    let rows = decoded.batch.as_ref().map_or(0, |b| b.num_rows());
    assert_eq!(rows, decoded.rows.len());
    assert_eq!(decoded.rows.len() + decoded.rejected.len(), values.len());
    let mut seen: Vec<usize> = decoded
        .rows
        .iter()
        .copied()
        .chain(decoded.rejected.iter().map(|r| r.index))
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..values.len()).collect::<Vec<_>>());
    assert!(decoded.rejected.iter().all(|r| !r.reason.is_empty()));
});
