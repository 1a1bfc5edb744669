//! Avro payloads (after the Confluent header) into Arrow with arrow-avro, through
//! the run decoder that isolates bad records: each payload becomes a row or a
//! rejection with a reason, and nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tributary::decode::registry::avro::AvroWriterSchema;
use tributary::decode::registry::framed::decode_run;

const SCHEMA: &str = include_str!("../../schemas/demo_events.avsc");

fuzz_target!(|values: Vec<&[u8]>| {
    let mut decoder = AvroWriterSchema::new(1, SCHEMA, 16).unwrap();
    let Ok(out) = decode_run(&mut decoder, &values) else {
        return;
    };
    let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, out.good.len());
    assert_eq!(out.good.len() + out.bad.len(), values.len());
    assert!(out.bad.iter().all(|(_, reason)| !reason.is_empty()));
});
