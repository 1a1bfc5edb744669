//! The per-record cost floor of ingestion on one core: JSON -> Arrow and Avro ->
//! Arrow decode (with the Kafka metadata columns; the same demo events in both
//! formats, Avro Confluent-framed), Parquet encode (snappy, zstd), and both
//! together, on chunks of the demo events (~230 B as JSON, 7 fields + 5 metadata
//! columns).
//!
//! `cargo bench --bench decode_encode` reports records/s (elements) per benchmark;
//! multiply by the mean record size for MB/s.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use deltalake::arrow::array::RecordBatch;
use deltalake::parquet::arrow::ArrowWriter;
use tributary::config::{Compression, MetadataColumns, OnError};
use tributary::decode::registry::{Registry, RegistryConfig, SchemaKind};
use tributary::decode::{JsonDecoder, RegistryDecoder};
use tributary::record::{RecordChunk, TopicPartition};
use tributary::schema::{TableSchema, parse_schema_json};
use tributary::sink::table::writer_properties;

const CHUNK: usize = 4096;

fn chunk() -> (RecordChunk, usize) {
    let values: Vec<String> = (0..CHUNK as u64)
        .map(tributary::ops::demo::sample_event)
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
    let record = parse_schema_json(tributary::ops::demo::DEMO_SCHEMA).unwrap();
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

const DEMO_AVRO: &str = include_str!("../schemas/demo_events.avsc");

/// The same events as Confluent-framed Avro (schema id 1).
#[allow(deprecated)] // GenericDatumWriter's builder is the new spelling; same bytes
fn avro_chunk() -> (RecordChunk, usize) {
    use apache_avro::types::Value as Av;
    let schema = apache_avro::Schema::parse_str(DEMO_AVRO).unwrap();
    let some = |v: Av| Av::Union(1, Box::new(v));
    let values: Vec<Vec<u8>> = (0..CHUNK as i64)
        .map(|i| {
            let record = Av::Record(vec![
                ("event_id".into(), Av::Long(i)),
                (
                    "user_id".into(),
                    some(Av::String(format!("user-{}", i % 997))),
                ),
                (
                    "kind".into(),
                    some(Av::String(
                        ["view", "click", "add_to_cart", "purchase"][(i % 4) as usize].into(),
                    )),
                ),
                (
                    "amount".into(),
                    some(Av::Decimal(
                        ((i % 500) * 100 + i % 100).to_be_bytes().to_vec().into(),
                    )),
                ),
                (
                    "country".into(),
                    some(Av::String(
                        ["DE", "US", "BR", "JP", "IN"][(i % 5) as usize].into(),
                    )),
                ),
                (
                    "ts".into(),
                    some(Av::TimestampMicros((1_735_689_600 + i) * 1_000_000)),
                ),
                (
                    "tags".into(),
                    some(Av::Array(vec![
                        some(Av::String(format!("t{}", i % 7))),
                        some(Av::String("demo".into())),
                    ])),
                ),
            ]);
            let mut out = vec![0, 0, 0, 0, 1];
            out.extend(apache_avro::to_avro_datum(&schema, record).unwrap());
            out
        })
        .collect();
    let bytes = values.iter().map(Vec::len).sum();
    let chunk = RecordChunk::from_values(
        &TopicPartition::new("bench", 0),
        0,
        values.iter().map(Vec::as_slice),
    );
    (chunk, bytes)
}

/// A registry that serves the demo Avro schema as id 1, on 127.0.0.1.
fn serve_registry(rt: &tokio::runtime::Runtime) -> String {
    use axum::routing::get;
    let body = serde_json::json!({ "schema": DEMO_AVRO }).to_string();
    rt.block_on(async move {
        let app = axum::Router::new().route(
            "/schemas/ids/1",
            get(move || {
                let body = body.clone();
                async move { body }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    })
}

fn avro_decoder(rt: &tokio::runtime::Runtime, chunk: &RecordChunk) -> RegistryDecoder {
    let registry = Registry::new(&RegistryConfig {
        urls: vec![serve_registry(rt)],
        username: None,
        password: None,
        bearer_token: None,
        ca_file: None,
        timeout: std::time::Duration::from_secs(5),
    })
    .unwrap();
    let mut d = RegistryDecoder::new(
        registry,
        SchemaKind::Avro,
        decoder().schema().clone(),
        CHUNK,
        OnError::Fail,
    );
    let evolution = rt.block_on(d.prepare(chunk, &|_| true)).unwrap();
    assert!(
        evolution.is_none(),
        "the Avro schema fits the JSON table schema"
    );
    d
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

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (avro, avro_bytes) = avro_chunk();
    eprintln!(
        "avro chunk: {CHUNK} records, {avro_bytes} bytes, {:.0} B/record",
        avro_bytes as f64 / CHUNK as f64
    );
    let mut a = avro_decoder(&rt, &avro);
    // Same rows either way.
    let from_avro = a.decode(&avro, &|_| true).unwrap().batch.unwrap();
    let from_json = d.decode(&chunk, |_| true).unwrap().batch.unwrap();
    assert_eq!(from_avro.num_rows(), CHUNK);
    assert_eq!(from_avro.columns()[..7], from_json.columns()[..7]);
    group.bench_function("avro_decode", |b| {
        b.iter(|| {
            black_box(
                a.decode(&avro, &|_| true)
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
