//! The per-record cost floor of ingestion on one core: JSON -> Arrow decode (with the
//! Kafka metadata columns), Parquet encode (snappy, zstd), and both together, on
//! chunks of the demo events (~230 B, 7 fields + 5 metadata columns).
//!
//! `cargo bench --bench decode_encode` reports records/s (elements) per benchmark;
//! multiply by the mean record size for MB/s.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use deltalake::arrow::array::RecordBatch;
use deltalake::parquet::arrow::ArrowWriter;
use tributary::config::{Compression, MetadataColumns};
use tributary::decode::JsonDecoder;
use tributary::record::{RecordChunk, TopicPartition};
use tributary::schema::{TableSchema, parse_schema_json};
use tributary::table::writer_properties;

const CHUNK: usize = 4096;

fn chunk() -> (RecordChunk, usize) {
    let values: Vec<String> = (0..CHUNK as u64)
        .map(tributary::demo::sample_event)
        .collect();
    let bytes = values.iter().map(String::len).sum();
    let chunk = RecordChunk::from_values(
        &TopicPartition::new("bench", 0),
        0,
        values.iter().map(String::as_bytes),
    );
    (chunk, bytes)
}

fn decoder() -> JsonDecoder {
    let record = parse_schema_json(tributary::demo::DEMO_SCHEMA).unwrap();
    let meta = MetadataColumns {
        topic: Some("_topic".into()),
        partition: Some("_partition".into()),
        offset: Some("_offset".into()),
        timestamp: Some("_timestamp".into()),
        key: Some("_key".into()),
        headers: None,
    };
    JsonDecoder::new(TableSchema::new(&record, &meta).unwrap(), CHUNK).unwrap()
}

fn encode(batches: &[RecordBatch], compression: Compression) -> usize {
    let props = writer_properties(compression, 128 * 1024);
    let mut out = Vec::with_capacity(1 << 20);
    let mut w = ArrowWriter::try_new(&mut out, batches[0].schema(), Some(props)).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
    out.len()
}

fn benches(c: &mut Criterion) {
    let (chunk, bytes) = chunk();
    eprintln!(
        "chunk: {CHUNK} records, {bytes} bytes, {:.0} B/record",
        bytes as f64 / CHUNK as f64
    );
    let mut group = c.benchmark_group("ingest_path");
    group.throughput(Throughput::Elements(CHUNK as u64));

    let mut d = decoder();
    group.bench_function("json_decode", |b| {
        b.iter(|| {
            black_box(
                d.decode(&chunk, |_| true)
                    .unwrap()
                    .batch
                    .unwrap()
                    .num_rows(),
            )
        })
    });

    let batch = d.decode(&chunk, |_| true).unwrap().batch.unwrap();
    let batches = vec![batch; 8]; // one 32k-row row group
    group.throughput(Throughput::Elements((CHUNK * 8) as u64));
    group.bench_function("parquet_encode_snappy", |b| {
        b.iter(|| black_box(encode(&batches, Compression::Snappy)))
    });
    group.bench_function("parquet_encode_zstd1", |b| {
        b.iter(|| black_box(encode(&batches, Compression::Zstd(1))))
    });
    group.bench_function("decode_and_encode_zstd1", |b| {
        b.iter(|| {
            let batches: Vec<RecordBatch> = (0..8)
                .map(|_| d.decode(&chunk, |_| true).unwrap().batch.unwrap())
                .collect();
            black_box(encode(&batches, Compression::Zstd(1)))
        })
    });
    // With a bad record in the chunk, decode falls back to isolating it.
    let mut bad = chunk.clone();
    let junk = bad.push_bytes(b"{\"event_id\":");
    bad.records[CHUNK / 2].value = Some(junk);
    group.throughput(Throughput::Elements(CHUNK as u64));
    group.bench_function("json_decode_with_one_bad_record", |b| {
        b.iter(|| black_box(d.decode(&bad, |_| true).unwrap().rejected.len()))
    });
    group.finish();
}

criterion_group!(ingest, benches);
criterion_main!(ingest);
