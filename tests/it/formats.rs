//! Registry formats end to end: Confluent-framed Avro through the real broker into
//! a table on the real S3 server, the table created from the registry, every Avro
//! type read back equal, schema evolution mid-stream (one worker and two racing),
//! and bad frames rejected with reasons.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use apache_avro::types::Value as Av;
use deltalake::arrow::array::{Array, AsArray, RecordBatch};
use deltalake::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int32Type, Int64Type, TimeUnit,
    TimestampMicrosecondType,
};
use tributary::config::OnError;
use tributary::decode::RegistryDecoder;
use tributary::decode::registry::{Registry, RegistryConfig, SchemaKind};
use tributary::record::{RecordChunk, TopicPartition};

use crate::harness::*;
use crate::ingest::{dead_letters, start};
use crate::registry::TestRegistry;

pub(crate) const ORDERS_V1: &str = include_str!("../../schemas/orders-v1.avsc");
pub(crate) const ORDERS_V2: &str = include_str!("../../schemas/orders-v2.avsc");

/// Confluent framing: magic 0, big-endian schema id, Avro binary body.
#[allow(deprecated)] // GenericDatumWriter's builder is the new spelling; same bytes
pub fn frame(schema: &str, id: u32, value: Av) -> Vec<u8> {
    let schema = apache_avro::Schema::parse_str(schema).unwrap();
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(apache_avro::to_avro_datum(&schema, value).unwrap());
    out
}

const DAY0: i32 = 19_723; // 2024-01-01
const MS0: i64 = 1_704_067_200_000;

fn uid(i: i64) -> uuid::Uuid {
    uuid::Uuid::from_u128(0x1234_5678_9abc_def0_u128 * (i as u128 + 1))
}

fn unscaled(i: i64) -> i64 {
    i * 100 + i % 100 - 500
}

fn opt(v: Option<Av>) -> Av {
    match v {
        Some(v) => Av::Union(1, Box::new(v)),
        None => Av::Union(0, Box::new(Av::Null)),
    }
}

/// Order `i` as v1 (or v2, with an email and a sometimes-missing name).
pub(crate) fn order(i: i64, v2: bool) -> Av {
    let status = ["ACTIVE", "SUSPENDED", "CLOSED"][(i % 3) as usize];
    let name = Av::String(format!("customer {i}"));
    let mut fields = vec![
        ("id".into(), Av::Long(i)),
        (
            "name".into(),
            match (v2, i % 4) {
                (false, _) => name,
                (true, 0) => opt(None),
                (true, _) => opt(Some(name)),
            },
        ),
        ("qty".into(), Av::Int((i % 7) as i32 - 3)),
        ("price".into(), Av::Float(i as f32 * 0.5)),
        ("ratio".into(), Av::Double(i as f64 / 3.0)),
        ("paid".into(), Av::Boolean(i % 2 == 0)),
        ("blob".into(), Av::Bytes(vec![i as u8, 0, 255])),
        (
            "amount".into(),
            Av::Decimal(unscaled(i).to_be_bytes().to_vec().into()),
        ),
        ("day".into(), Av::Date(DAY0 + i as i32)),
        ("ts_ms".into(), Av::TimestampMillis(MS0 + i * 1001)),
        (
            "ts_us".into(),
            Av::TimestampMicros(MS0 * 1000 + i * 1_000_001),
        ),
        ("uid".into(), Av::Uuid(uid(i))),
        (
            "attrs".into(),
            Av::Map(HashMap::from([
                ("a".to_owned(), Av::Long(i)),
                ("b".to_owned(), Av::Long(-i)),
            ])),
        ),
        (
            "tags".into(),
            Av::Array((0..i % 3).map(|t| Av::String(format!("t{t}"))).collect()),
        ),
        (
            "address".into(),
            Av::Record(vec![
                ("street".into(), Av::String(format!("{i} Main St"))),
                (
                    "zip".into(),
                    opt((i % 2 == 1).then(|| Av::Int(10_000 + i as i32))),
                ),
            ]),
        ),
        (
            "note".into(),
            opt((i % 5 == 0).then(|| Av::String(format!("note {i}")))),
        ),
        ("status".into(), Av::Enum((i % 3) as u32, status.into())),
    ];
    if v2 {
        fields.push((
            "email".into(),
            opt((i % 2 == 0).then(|| Av::String(format!("c{i}@example.com")))),
        ));
    }
    Av::Record(fields)
}

/// ORDERS_V1 with `field` of type `to` (instead of `from`), and order `i` with
/// `value` there: what a producer with an incompatible schema sends.
fn retyped(field: &str, from: &str, to: &str, i: i64, value: Av) -> (String, Av) {
    let schema = ORDERS_V1.replacen(
        &format!(r#""name": "{field}", "type": "{from}""#),
        &format!(r#""name": "{field}", "type": "{to}""#),
        1,
    );
    assert_ne!(
        schema, ORDERS_V1,
        "field `{field}` of type {from} is in ORDERS_V1"
    );
    let Av::Record(mut fields) = order(i, false) else {
        unreachable!("orders are records")
    };
    fields
        .iter_mut()
        .find(|(n, _)| n == field)
        .expect("the field is in the record")
        .1 = value;
    (schema, Av::Record(fields))
}

fn avro_config(s: &Scenario, registry: &TestRegistry, extra: &str) -> tributary::config::Config {
    s.registry_config(
        "avro",
        &registry.url(),
        &format!("username = \"sr-user\"\npassword = \"sr-pass\"\n\n{extra}"),
    )
}

/// Every row, ordered by id, in the table's own Arrow types (DataFusion reads
/// strings as views; cast them back).
async fn all_rows(s: &Scenario) -> RecordBatch {
    let t = s.table().await.expect("table exists");
    let batches = query(&t, "SELECT * FROM t ORDER BY id, _offset").await;
    let b = deltalake::arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let delta = t.snapshot().unwrap().schema().as_ref().clone();
    let arrow = tributary::schema::TableSchema::from_table(&delta, &Default::default(), &[])
        .unwrap()
        .arrow;
    let columns = arrow
        .fields()
        .iter()
        .map(|f| {
            deltalake::arrow::compute::cast(b.column_by_name(f.name()).unwrap(), f.data_type())
                .unwrap()
        })
        .collect();
    RecordBatch::try_new(arrow, columns).unwrap()
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> &'a dyn Array {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("column {name}"))
        .as_ref()
}

/// Check row `r` of `b` holds order `i` exactly.
fn assert_order(b: &RecordBatch, r: usize, i: i64, v2: bool) {
    assert_eq!(col(b, "id").as_primitive::<Int64Type>().value(r), i);
    let name = col(b, "name").as_string::<i32>();
    if v2 && i % 4 == 0 {
        assert!(name.is_null(r), "row {i}: name should be null");
    } else {
        assert_eq!(name.value(r), format!("customer {i}"));
    }
    assert_eq!(
        col(b, "qty").as_primitive::<Int32Type>().value(r),
        (i % 7) as i32 - 3
    );
    assert_eq!(
        col(b, "price").as_primitive::<Float32Type>().value(r),
        i as f32 * 0.5
    );
    assert_eq!(
        col(b, "ratio").as_primitive::<Float64Type>().value(r),
        i as f64 / 3.0
    );
    assert_eq!(col(b, "paid").as_boolean().value(r), i % 2 == 0);
    assert_eq!(
        col(b, "blob").as_binary::<i32>().value(r),
        &[i as u8, 0, 255]
    );
    assert_eq!(
        col(b, "amount").as_primitive::<Decimal128Type>().value(r),
        i128::from(unscaled(i))
    );
    assert_eq!(
        col(b, "day").as_primitive::<Date32Type>().value(r),
        DAY0 + i as i32
    );
    let ts = |c| {
        col(b, c)
            .as_primitive::<TimestampMicrosecondType>()
            .value(r)
    };
    assert_eq!(ts("ts_ms"), (MS0 + i * 1001) * 1000);
    assert_eq!(ts("ts_us"), MS0 * 1000 + i * 1_000_001);
    assert_eq!(
        col(b, "uid").as_string::<i32>().value(r),
        uid(i).hyphenated().to_string()
    );
    let attrs = col(b, "attrs").as_map().value(r);
    let keys = attrs.column(0).as_string::<i32>();
    let values = attrs.column(1).as_primitive::<Int64Type>();
    let map: BTreeMap<&str, i64> = (0..attrs.len())
        .map(|k| (keys.value(k), values.value(k)))
        .collect();
    assert_eq!(map, BTreeMap::from([("a", i), ("b", -i)]));
    let tags = col(b, "tags").as_list::<i32>().value(r);
    let tags: Vec<&str> = tags.as_string::<i32>().iter().map(Option::unwrap).collect();
    let expected: Vec<String> = (0..i % 3).map(|t| format!("t{t}")).collect();
    assert_eq!(tags, expected);
    let address = col(b, "address").as_struct();
    assert_eq!(
        address
            .column_by_name("street")
            .unwrap()
            .as_string::<i32>()
            .value(r),
        format!("{i} Main St")
    );
    let zip = address
        .column_by_name("zip")
        .unwrap()
        .as_primitive::<Int32Type>();
    if i % 2 == 1 {
        assert_eq!(zip.value(r), 10_000 + i as i32);
    } else {
        assert!(zip.is_null(r));
    }
    let note = col(b, "note").as_string::<i32>();
    if i % 5 == 0 {
        assert_eq!(note.value(r), format!("note {i}"));
    } else {
        assert!(note.is_null(r));
    }
    assert_eq!(
        col(b, "status").as_string::<i32>().value(r),
        ["ACTIVE", "SUSPENDED", "CLOSED"][(i % 3) as usize]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_every_type_round_trips_into_a_table_created_from_the_registry() {
    let registry = TestRegistry::start(Some(("sr-user", "sr-pass"))).await;
    let s = Scenario::new("avro-types", 2).await;
    let id = registry.register(&format!("{}-value", s.topic), "AVRO", ORDERS_V1);
    let producer = producer(&s.servers.brokers);
    let n = 300i64;
    let produced = produce(
        &producer,
        &s.topic,
        (0..n).map(|i| ((i % 2) as i32, frame(ORDERS_V1, id, order(i, false)))),
    )
    .await;
    let mut run = start(avro_config(
        &s,
        &registry,
        "[flush]\nmax_rows = 100\nmax_age = \"1s\"",
    ));
    run.committed(&s.topic, &last_offsets(&produced)).await;
    let summary = run.stop().await;
    assert_eq!(summary.rejected, 0);

    // The table was created from the registry's schema, with Delta's types.
    let t = s.table().await.unwrap();
    let schema = t.snapshot().unwrap().schema();
    let ty = |c: &str| serde_json::to_value(schema.field(c).unwrap().data_type()).unwrap();
    assert_eq!(ty("amount"), "decimal(12,2)");
    assert_eq!(ty("day"), "date");
    assert_eq!(ty("ts_ms"), "timestamp");
    assert_eq!(ty("ts_us"), "timestamp");
    assert_eq!(ty("uid"), "string");
    assert_eq!(ty("status"), "string");
    assert_eq!(ty("attrs")["type"], "map");
    assert_eq!(ty("tags")["type"], "array");
    assert_eq!(ty("address")["type"], "struct");
    assert!(!schema.field("id").unwrap().is_nullable());
    assert!(schema.field("note").unwrap().is_nullable());

    let b = all_rows(&s).await;
    assert_eq!(b.num_rows(), n as usize);
    assert_eq!(
        b.schema().field_with_name("ts_ms").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    for r in 0..b.num_rows() {
        assert_order(&b, r, r as i64, false);
    }
    // One fetch per schema id (plus the subject lookup at creation), not per record.
    assert!(
        registry.requests() <= 3,
        "{} registry requests",
        registry.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evolved_schema_mid_stream_adds_the_column_and_incompatible_records_are_rejected() {
    let registry = TestRegistry::start(Some(("sr-user", "sr-pass"))).await;
    let s = Scenario::new("avro-evolve", 1).await;
    let subject = format!("{}-value", s.topic);
    let v1 = registry.register(&subject, "AVRO", ORDERS_V1);
    let producer = producer(&s.servers.brokers);
    let mut produced = produce(
        &producer,
        &s.topic,
        (0..100).map(|i| (0, frame(ORDERS_V1, v1, order(i, false)))),
    )
    .await;
    // The table is created from v1, the subject's latest version at start.
    let mut run = start(avro_config(
        &s,
        &registry,
        "[flush]\nmax_rows = 60\nmax_age = \"1s\"",
    ));
    run.committed(&s.topic, &last_offsets(&produced)).await;

    // Then the producer moves to v2, and one producer on another subject sends `id`
    // as a string, which the table cannot hold.
    let v2 = registry.register(&subject, "AVRO", ORDERS_V2);
    let (bad_schema, bad_record) = retyped("id", "long", "string", 0, Av::String("x".into()));
    let v3 = registry.register("elsewhere-value", "AVRO", &bad_schema);
    let mut records: Vec<(i32, Vec<u8>)> = (100..200)
        .map(|i| (0, frame(ORDERS_V2, v2, order(i, true))))
        .collect();
    records.push((0, frame(&bad_schema, v3, bad_record)));
    records.extend((200..250).map(|i| (0, frame(ORDERS_V2, v2, order(i, true)))));
    produced = produce(&producer, &s.topic, records).await;
    run.committed(&s.topic, &last_offsets(&produced)).await;
    let summary = run.stop().await;
    assert_eq!(summary.rejected, 1, "the id-as-string record is rejected");

    let t = s.table().await.unwrap();
    let schema = t.snapshot().unwrap().schema();
    let email = schema.field("email").expect("email column added");
    assert!(email.is_nullable());
    assert!(
        schema.field("name").unwrap().is_nullable(),
        "name made optional"
    );
    assert!(!schema.field("id").unwrap().is_nullable());
    // The metadata columns stay where they were; the new column comes after them.
    let names: Vec<&str> = schema.fields().map(|f| f.name().as_str()).collect();
    assert_eq!(names.last(), Some(&"email"));
    let add_column = s
        .operations()
        .await
        .iter()
        .filter(|o| *o == "ADD COLUMN")
        .count();
    assert_eq!(add_column, 1, "one schema change commit");

    let b = all_rows(&s).await;
    assert_eq!(b.num_rows(), 250);
    let emails = col(&b, "email").as_string::<i32>();
    for r in 0..b.num_rows() {
        let i = r as i64;
        assert_order(&b, r, i, i >= 100);
        if i < 100 || i % 2 == 1 {
            assert!(emails.is_null(r), "row {i}: email should be null");
        } else {
            assert_eq!(emails.value(r), format!("c{i}@example.com"));
        }
    }
    let stored = s.stored_offsets(1).await;
    assert_eq!(
        stored[&0],
        Some(250),
        "the rejected record's offset is accounted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_evolving_one_table_at_once_add_the_column_once() {
    let registry = TestRegistry::start(None).await;
    let s = Scenario::new("avro-evolve-race", 2).await;
    let subject = format!("{}-value", s.topic);
    let v1 = registry.register(&subject, "AVRO", ORDERS_V1);
    let producer = producer(&s.servers.brokers);
    let first = produce(
        &producer,
        &s.topic,
        (0..40).map(|i| ((i % 2) as i32, frame(ORDERS_V1, v1, order(i, false)))),
    )
    .await;
    let cfg = || {
        s.registry_config(
            "avro",
            &registry.url(),
            "[flush]\nmax_rows = 20\nmax_age = \"500ms\"",
        )
    };
    let a = start(cfg());
    let b = start(cfg());
    // Both workers must hold a partition before v2 arrives on both.
    let (sa, sb) = (a.stats.clone(), b.stats.clone());
    eventually(Duration::from_secs(60), "both workers assigned", || {
        let ok = sa
            .assigned_partitions
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
            && sb
                .assigned_partitions
                .load(std::sync::atomic::Ordering::Relaxed)
                == 1;
        async move { ok.then_some(()) }
    })
    .await;
    let mut last = last_offsets(&first);
    let v2 = registry.register(&subject, "AVRO", ORDERS_V2);
    let second = produce(
        &producer,
        &s.topic,
        (40..200).map(|i| ((i % 2) as i32, frame(ORDERS_V2, v2, order(i, true)))),
    )
    .await;
    for (p, o) in last_offsets(&second) {
        last.insert(p, o);
    }
    let s_ref = &s;
    eventually(
        Duration::from_secs(90),
        "both partitions committed",
        || async {
            let stored = s_ref.stored_offsets(2).await;
            (stored == last).then_some(())
        },
    )
    .await;
    a.stop().await;
    b.stop().await;

    let t = s.table().await.unwrap();
    let schema = t.snapshot().unwrap().schema();
    assert_eq!(schema.fields().filter(|f| f.name() == "email").count(), 1);
    let add_column = s
        .operations()
        .await
        .iter()
        .filter(|o| *o == "ADD COLUMN")
        .count();
    assert_eq!(add_column, 1, "the race adds the column once");
    let rows = all_rows(&s).await;
    assert_eq!(rows.num_rows(), 200, "every record exactly once");
    for r in 0..rows.num_rows() {
        let i = r as i64;
        assert_order(&rows, r, i, i >= 40);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_schema_ids_and_broken_frames_are_rejected_with_reasons() {
    let registry = TestRegistry::start(None).await;
    let id = registry.register("orders-value", "AVRO", ORDERS_V1);
    let schema = tributary::schema::TableSchema::new(
        &tributary::decode::record_schema(
            &tributary::decode::registry::Schema {
                id,
                kind: SchemaKind::Avro,
                text: ORDERS_V1.into(),
                references: vec![],
            },
            &[],
        )
        .unwrap(),
        &tributary::config::MetadataColumns::default(),
    )
    .unwrap();
    let client = Registry::new(&RegistryConfig {
        urls: vec![registry.url()],
        username: None,
        password: None,
        bearer_token: None,
        ca_file: None,
        timeout: Duration::from_secs(5),
    })
    .unwrap();
    let mut decoder = RegistryDecoder::new(client, SchemaKind::Avro, schema, 1024, OnError::Skip);
    let good = frame(ORDERS_V1, id, order(1, false));
    let mut unknown = good.clone();
    unknown[1..5].copy_from_slice(&999u32.to_be_bytes());
    let truncated = good[..good.len() - 3].to_vec();
    let json = br#"{"id": 1}"#.to_vec();
    let short = vec![0u8, 0, 0];
    let values: Vec<&[u8]> = vec![&good, &unknown, &truncated, &json, &short, &good];
    let chunk = RecordChunk::from_values(&TopicPartition::new("orders", 0), 0, values);
    let keep = |_: usize| true;
    assert!(decoder.prepare(&chunk, &keep).await.unwrap().is_none());
    let out = decoder.decode(&chunk, &keep).unwrap();
    assert_eq!(out.rows, [0, 5]);
    let reasons: BTreeMap<usize, &str> = out
        .rejected
        .iter()
        .map(|r| (r.index, r.reason.as_str()))
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(
        reasons[&1].contains("schema id 999") && reasons[&1].contains("40403"),
        "{}",
        reasons[&1]
    );
    assert!(reasons[&2].contains("invalid Avro"), "{}", reasons[&2]);
    assert!(
        reasons[&3].contains("not Confluent wire format"),
        "{}",
        reasons[&3]
    );
    assert!(
        reasons[&4].contains("truncated Confluent header"),
        "{}",
        reasons[&4]
    );
    // The unknown id was asked for once and the answer cached.
    let before = registry.requests();
    decoder.prepare(&chunk, &keep).await.unwrap();
    decoder.decode(&chunk, &keep).unwrap();
    assert_eq!(registry.requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_schema_changes_land_once_and_every_worker_sees_the_result() {
    let s = Scenario::new("evolve-cas", 1).await;
    let cfg = s.config("");
    let opened = tributary::sink::table::open_or_create(&cfg.table, &cfg.storage, None)
        .await
        .unwrap();
    let record = tributary::schema::parse_schema_json(tributary::ops::demo::DEMO_SCHEMA).unwrap();
    let producer = deltalake::kernel::StructType::try_new(record.fields().cloned().chain([
        deltalake::kernel::StructField::new("email", deltalake::kernel::DataType::STRING, true),
    ]))
    .unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let mut table = opened.table.clone();
            let producer = producer.clone();
            let meta = cfg.table.metadata_columns.clone();
            tokio::spawn(async move {
                tributary::sink::table::evolve(&mut table, &producer, &meta, &[]).await
            })
        })
        .collect();
    for t in tasks {
        let schema = t.await.unwrap().expect("evolve succeeds for every worker");
        assert!(schema.delta.field("email").is_some());
        assert_eq!(schema.arrow.fields().len(), schema.delta.fields().count());
    }
    let ops = s.operations().await;
    assert_eq!(
        ops.iter().filter(|o| *o == "ADD COLUMN").count(),
        1,
        "{ops:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_records_round_trip_into_a_table_created_from_the_registry() {
    let registry = TestRegistry::start(None).await;
    let s = Scenario::new("json-schema", 1).await;
    let text = include_str!("../../schemas/orders.schema.json");
    let id = registry.register(&format!("{}-value", s.topic), "JSON", text);
    let framed = |json: String| {
        let mut v = vec![0];
        v.extend_from_slice(&id.to_be_bytes());
        v.extend_from_slice(json.as_bytes());
        v
    };
    let mut records: Vec<(i32, Vec<u8>)> = (0..100i64)
        .map(|i| {
            let status = ["ACTIVE", "SUSPENDED", "CLOSED"][(i % 3) as usize];
            let json = serde_json::json!({
                "id": i,
                "name": format!("customer {i}"),
                "price": i as f64 * 0.5,
                "paid": i % 2 == 0,
                "day": format!("2024-01-{:02}", 1 + i % 28),
                "ts": format!("2024-01-01T00:00:{:02}Z", i % 60),
                "tags": (0..i % 3).map(|t| format!("t{t}")).collect::<Vec<_>>(),
                "attrs": {"a": i},
                "address": {"street": format!("{i} Main St"), "zip": if i % 2 == 0 { serde_json::Value::Null } else { serde_json::json!(10_000 + i) }},
                "status": status,
                "note": if i % 5 == 0 { serde_json::json!(format!("note {i}")) } else { serde_json::Value::Null },
            });
            (0, framed(json.to_string()))
        })
        .collect();
    // A record missing the required `ts`, and one that is not JSON.
    records.insert(10, (0, framed(r#"{"id": 1000, "name": "x"}"#.into())));
    records.insert(20, (0, framed("{\"id\": ".into())));
    let produced = produce(&producer(&s.servers.brokers), &s.topic, records).await;
    let cfg = s.registry_config("json_schema", &registry.url(), "[flush]\nmax_age = \"1s\"");
    let mut run = start(cfg);
    run.committed(&s.topic, &last_offsets(&produced)).await;
    assert_eq!(run.stop().await.rejected, 2);

    let t = s.table().await.unwrap();
    let schema = t.snapshot().unwrap().schema();
    let ty = |c: &str| serde_json::to_value(schema.field(c).unwrap().data_type()).unwrap();
    assert_eq!(ty("id"), "long");
    assert_eq!(ty("price"), "double");
    assert_eq!(ty("day"), "date");
    assert_eq!(ty("ts"), "timestamp");
    assert_eq!(ty("attrs")["type"], "map");
    assert_eq!(ty("address")["type"], "struct");
    assert!(!schema.field("ts").unwrap().is_nullable());

    let b = all_rows(&s).await;
    assert_eq!(b.num_rows(), 100);
    for r in 0..100 {
        let i = r as i64;
        assert_eq!(col(&b, "id").as_primitive::<Int64Type>().value(r), i);
        assert_eq!(
            col(&b, "name").as_string::<i32>().value(r),
            format!("customer {i}")
        );
        assert_eq!(
            col(&b, "price").as_primitive::<Float64Type>().value(r),
            i as f64 * 0.5
        );
        assert_eq!(col(&b, "paid").as_boolean().value(r), i % 2 == 0);
        assert_eq!(
            col(&b, "day").as_primitive::<Date32Type>().value(r),
            DAY0 + (i % 28) as i32
        );
        assert_eq!(
            col(&b, "ts")
                .as_primitive::<TimestampMicrosecondType>()
                .value(r),
            (MS0 + (i % 60) * 1000) * 1000
        );
        let tags = col(&b, "tags").as_list::<i32>().value(r);
        assert_eq!(tags.len() as i64, i % 3);
        let attrs = col(&b, "attrs").as_map().value(r);
        assert_eq!(attrs.column(1).as_primitive::<Int64Type>().value(0), i);
        let zip = col(&b, "address")
            .as_struct()
            .column_by_name("zip")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(zip.is_null(r), i % 2 == 0);
        assert_eq!(
            col(&b, "status").as_string::<i32>().value(r),
            ["ACTIVE", "SUSPENDED", "CLOSED"][(i % 3) as usize]
        );
        assert_eq!(col(&b, "note").as_string::<i32>().is_null(r), i % 5 != 0);
    }
}

/// Order `i` as a Protobuf message of `schemas/orders.proto`.
fn proto_order(order: &prost_reflect::MessageDescriptor, i: i64) -> Vec<u8> {
    use prost_reflect::{DynamicMessage, MapKey, Value as Pv};
    use protox::prost::Message;
    let sub = |name: &str| {
        order
            .get_field_by_name(name)
            .unwrap()
            .kind()
            .as_message()
            .unwrap()
            .clone()
    };
    let mut m = DynamicMessage::new(order.clone());
    m.set_field_by_name("id", Pv::I64(i));
    m.set_field_by_name("name", Pv::String(format!("customer {i}")));
    m.set_field_by_name("delta", Pv::I32(-(i as i32)));
    m.set_field_by_name("big", Pv::U64(u64::MAX / 4 + i as u64));
    m.set_field_by_name("price", Pv::F32(i as f32 * 0.5));
    m.set_field_by_name("ratio", Pv::F64(i as f64 / 3.0));
    m.set_field_by_name("paid", Pv::Bool(i % 2 == 0));
    m.set_field_by_name("blob", Pv::Bytes(vec![i as u8, 7].into()));
    m.set_field_by_name("status", Pv::EnumNumber((i % 3) as i32));
    if i % 4 != 0 {
        let mut a = DynamicMessage::new(sub("address"));
        a.set_field_by_name("street", Pv::String(format!("{i} Main St")));
        if i % 2 == 1 {
            a.set_field_by_name("zip", Pv::I32(10_000 + i as i32));
        }
        m.set_field_by_name("address", Pv::Message(a));
    }
    m.set_field_by_name(
        "tags",
        Pv::List((0..i % 3).map(|t| Pv::String(format!("t{t}"))).collect()),
    );
    let lines = (0..i % 2 + 1)
        .map(|l| {
            let mut line = DynamicMessage::new(sub("lines"));
            line.set_field_by_name("sku", Pv::String(format!("sku-{i}-{l}")));
            line.set_field_by_name("qty", Pv::U32(l as u32 + 1));
            Pv::Message(line)
        })
        .collect();
    m.set_field_by_name("lines", Pv::List(lines));
    m.set_field_by_name(
        "attrs",
        Pv::Map(HashMap::from([
            (MapKey::String("a".into()), Pv::I64(i)),
            (MapKey::String("b".into()), Pv::I64(-i)),
        ])),
    );
    if i % 2 == 0 {
        m.set_field_by_name("card", Pv::String(format!("card-{i}")));
    } else {
        m.set_field_by_name("voucher", Pv::I64(i * 10));
    }
    if i % 5 == 0 {
        m.set_field_by_name("note", Pv::String(format!("note {i}")));
    }
    let mut ts = DynamicMessage::new(sub("ts"));
    ts.set_field_by_name("seconds", Pv::I64(MS0 / 1000 + i));
    ts.set_field_by_name("nanos", Pv::I32(123_456_000));
    m.set_field_by_name("ts", Pv::Message(ts));
    if i % 3 == 0 {
        let mut c = DynamicMessage::new(sub("coupon"));
        c.set_field_by_name("value", Pv::String(format!("SAVE{i}")));
        m.set_field_by_name("coupon", Pv::Message(c));
    }
    m.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_every_type_round_trips_into_a_table_created_from_the_registry() {
    let registry = TestRegistry::start(None).await;
    let s = Scenario::new("protobuf", 1).await;
    let text = include_str!("../../schemas/orders.proto");
    let id = registry.register(&format!("{}-value", s.topic), "PROTOBUF", text);
    let order = tributary::decode::registry::protobuf::compile(text, &[])
        .unwrap()
        .remove(0);
    let framed = |payload: Vec<u8>| {
        // magic, id, message indexes [0] (the single byte 0), message
        let mut v = vec![0];
        v.extend_from_slice(&id.to_be_bytes());
        v.push(0);
        v.extend(payload);
        v
    };
    let mut records: Vec<(i32, Vec<u8>)> = (0..120i64)
        .map(|i| (0, framed(proto_order(&order, i))))
        .collect();
    // Garbage after a valid header, and a frame naming message index 5.
    records.insert(7, (0, framed(vec![0xff, 0xff, 0xff])));
    let mut wrong_index = vec![0];
    wrong_index.extend_from_slice(&id.to_be_bytes());
    wrong_index.extend([2, 10]);
    records.insert(8, (0, wrong_index));
    let produced = produce(&producer(&s.servers.brokers), &s.topic, records).await;
    let cfg = s.registry_config(
        "protobuf",
        &registry.url(),
        "[flush]\nmax_rows = 50\nmax_age = \"1s\"",
    );
    let mut run = start(cfg);
    run.committed(&s.topic, &last_offsets(&produced)).await;
    assert_eq!(run.stop().await.rejected, 2);

    let b = all_rows(&s).await;
    assert_eq!(b.num_rows(), 120);
    let string = |c: &str, r: usize| col(&b, c).as_string::<i32>().value(r).to_owned();
    for r in 0..120 {
        let i = r as i64;
        assert_eq!(col(&b, "id").as_primitive::<Int64Type>().value(r), i);
        assert_eq!(string("name", r), format!("customer {i}"));
        assert_eq!(
            col(&b, "delta").as_primitive::<Int32Type>().value(r),
            -(i as i32)
        );
        assert_eq!(
            col(&b, "big").as_primitive::<Int64Type>().value(r),
            (u64::MAX / 4 + i as u64) as i64
        );
        assert_eq!(
            col(&b, "price").as_primitive::<Float32Type>().value(r),
            i as f32 * 0.5
        );
        assert_eq!(
            col(&b, "ratio").as_primitive::<Float64Type>().value(r),
            i as f64 / 3.0
        );
        assert_eq!(col(&b, "paid").as_boolean().value(r), i % 2 == 0);
        assert_eq!(col(&b, "blob").as_binary::<i32>().value(r), &[i as u8, 7]);
        assert_eq!(
            string("status", r),
            ["ACTIVE", "SUSPENDED", "CLOSED"][(i % 3) as usize]
        );
        let address = col(&b, "address").as_struct();
        assert_eq!(address.is_null(r), i % 4 == 0, "row {i} address");
        if i % 4 != 0 {
            let street = address.column_by_name("street").unwrap().as_string::<i32>();
            assert_eq!(street.value(r), format!("{i} Main St"));
            let zip = address
                .column_by_name("zip")
                .unwrap()
                .as_primitive::<Int32Type>();
            assert_eq!(zip.is_null(r), i % 2 == 0);
        }
        let tags = col(&b, "tags").as_list::<i32>().value(r);
        assert_eq!(tags.len() as i64, i % 3);
        let lines = col(&b, "lines").as_list::<i32>().value(r);
        let lines = lines.as_struct();
        assert_eq!(lines.len() as i64, i % 2 + 1);
        assert_eq!(
            lines
                .column_by_name("sku")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            format!("sku-{i}-0")
        );
        assert_eq!(
            lines
                .column_by_name("qty")
                .unwrap()
                .as_primitive::<Int64Type>()
                .value(0),
            1
        );
        let attrs = col(&b, "attrs").as_map().value(r);
        let keys = attrs.column(0).as_string::<i32>();
        let values = attrs.column(1).as_primitive::<Int64Type>();
        let map: BTreeMap<&str, i64> = (0..attrs.len())
            .map(|k| (keys.value(k), values.value(k)))
            .collect();
        assert_eq!(map, BTreeMap::from([("a", i), ("b", -i)]));
        let card = col(&b, "card").as_string::<i32>();
        let voucher = col(&b, "voucher").as_primitive::<Int64Type>();
        if i % 2 == 0 {
            assert_eq!(card.value(r), format!("card-{i}"));
            assert!(voucher.is_null(r), "oneof: one member set");
        } else {
            assert!(card.is_null(r));
            assert_eq!(voucher.value(r), i * 10);
        }
        assert_eq!(col(&b, "note").as_string::<i32>().is_null(r), i % 5 != 0);
        assert_eq!(
            col(&b, "ts")
                .as_primitive::<TimestampMicrosecondType>()
                .value(r),
            (MS0 / 1000 + i) * 1_000_000 + 123_456
        );
        let coupon = col(&b, "coupon").as_string::<i32>();
        if i % 3 == 0 {
            assert_eq!(coupon.value(r), format!("SAVE{i}"));
        } else {
            assert!(coupon.is_null(r));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_registry_credentials_stop_the_pipeline_with_a_clear_error() {
    let registry = TestRegistry::start(Some(("sr-user", "right"))).await;
    let s = Scenario::new("avro-auth", 1).await;
    registry.register(&format!("{}-value", s.topic), "AVRO", ORDERS_V1);
    let mut cfg = avro_config(&s, &registry, "");
    if let Some(r) = cfg.decode.registry.as_mut() {
        r.password = Some(tributary::secret::Secret::new("wrong"));
    }
    let stats = std::sync::Arc::new(tributary::telemetry::stats::PipelineStats::default());
    let err = tributary::pipeline::run(cfg, stats, Default::default(), std::future::pending())
        .await
        .expect_err("the pipeline must not start");
    let msg = err.to_string();
    assert!(
        msg.contains("refused the credentials") && msg.contains("schema_registry.username"),
        "{msg}"
    );
    assert!(!msg.contains("wrong"), "the password is not echoed: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_incompatible_fail_stops_the_pipeline_naming_the_field() {
    let registry = TestRegistry::start(Some(("sr-user", "sr-pass"))).await;
    let s = Scenario::new("avro-strict", 1).await;
    let v1 = registry.register(&format!("{}-value", s.topic), "AVRO", ORDERS_V1);
    let (bad_schema, bad) = retyped("qty", "int", "string", 1, Av::String("three".into()));
    let v9 = registry.register("elsewhere-value", "AVRO", &bad_schema);
    let records = vec![
        (0, frame(ORDERS_V1, v1, order(0, false))),
        (0, frame(&bad_schema, v9, bad)),
    ];
    let produced = produce(&producer(&s.servers.brokers), &s.topic, records).await;
    assert_eq!(produced[&0].len(), 2);
    let mut strict = avro_config(&s, &registry, "[flush]\nmax_age = \"1s\"\n");
    strict.decode.on_incompatible = OnError::Fail;
    let stats = std::sync::Arc::new(tributary::telemetry::stats::PipelineStats::default());
    let result = tokio::time::timeout(
        Duration::from_secs(90),
        tributary::pipeline::run(strict, stats, Default::default(), std::future::pending()),
    )
    .await
    .expect("the pipeline stops by itself");
    let msg = result
        .expect_err("an incompatible schema stops it")
        .to_string();
    assert!(
        msg.contains("field `qty`") && msg.contains("on_incompatible"),
        "{msg}"
    );
    // Nothing past the good record was committed.
    let stored = s.stored_offsets(1).await;
    assert!(stored[&0].is_none_or(|o| o < 1), "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_imports_resolve_through_registry_references() {
    use prost_reflect::{DynamicMessage, Value as Pv};
    use protox::prost::Message;
    let registry = TestRegistry::start(None).await;
    let s = Scenario::new("proto-refs", 1).await;
    let money = "syntax = \"proto3\";\npackage shared;\nmessage Money { int64 units = 1; string currency = 2; }\n";
    registry.register("shared-money", "PROTOBUF", money);
    let payment = "syntax = \"proto3\";\nimport \"shared/money.proto\";\nmessage Payment { string id = 1; shared.Money amount = 2; }\n";
    let import = (
        "shared/money.proto".to_owned(),
        "shared-money".to_owned(),
        1,
    );
    let id = registry.register_with_references(
        &format!("{}-value", s.topic),
        "PROTOBUF",
        payment,
        std::slice::from_ref(&import),
    );
    let desc = tributary::decode::registry::protobuf::compile(
        payment,
        &[(import.0.clone(), money.to_owned())],
    )
    .unwrap()
    .remove(0);
    let money_desc = desc
        .get_field_by_name("amount")
        .unwrap()
        .kind()
        .as_message()
        .unwrap()
        .clone();
    let records: Vec<(i32, Vec<u8>)> = (0..40i64)
        .map(|i| {
            let mut m = DynamicMessage::new(desc.clone());
            m.set_field_by_name("id", Pv::String(format!("pay-{i}")));
            let mut amount = DynamicMessage::new(money_desc.clone());
            amount.set_field_by_name("units", Pv::I64(i * 100));
            amount.set_field_by_name("currency", Pv::String("EUR".into()));
            m.set_field_by_name("amount", Pv::Message(amount));
            let mut v = vec![0];
            v.extend_from_slice(&id.to_be_bytes());
            v.push(0);
            v.extend(m.encode_to_vec());
            (0, v)
        })
        .collect();
    let produced = produce(&producer(&s.servers.brokers), &s.topic, records).await;
    let mut run =
        start(s.registry_config("protobuf", &registry.url(), "[flush]\nmax_age = \"1s\""));
    run.committed(&s.topic, &last_offsets(&produced)).await;
    assert_eq!(run.stop().await.rejected, 0);
    let t = s.table().await.unwrap();
    let b = query(
        &t,
        "SELECT id, amount.units, amount.currency FROM t ORDER BY _offset",
    )
    .await;
    let b = deltalake::arrow::compute::concat_batches(&b[0].schema(), &b).unwrap();
    assert_eq!(b.num_rows(), 40);
    let text = |c: usize| deltalake::arrow::compute::cast(b.column(c), &DataType::Utf8).unwrap();
    let (ids, currencies) = (text(0), text(2));
    for r in 0..40 {
        assert_eq!(ids.as_string::<i32>().value(r), format!("pay-{r}"));
        assert_eq!(
            b.column(1).as_primitive::<Int64Type>().value(r),
            r as i64 * 100
        );
        assert_eq!(currencies.as_string::<i32>().value(r), "EUR");
    }
}

/// The registry is reachable only over HTTPS with a certificate from a private CA:
/// `schema_registry.ca_file` makes the client trust it, and records decode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_through_a_registry_behind_tls_with_a_private_ca() {
    let registry = TestRegistry::start(Some(("sr-user", "sr-pass"))).await;
    let s = Scenario::new("avro-tls", 1).await;
    let (ca, server_pem) = private_ca(s.dir.path());
    let tls_port = free_port();
    let _tls = TlsTerminator::start(tls_port, &server_pem, &registry.addr.to_string()).await;
    let id = registry.register(&format!("{}-value", s.topic), "AVRO", ORDERS_V1);
    let produced = produce(
        &producer(&s.servers.brokers),
        &s.topic,
        (0..50i64).map(|i| (0, frame(ORDERS_V1, id, order(i, false)))),
    )
    .await;
    let cfg = s.registry_config(
        "avro",
        &format!("https://127.0.0.1:{tls_port}"),
        &format!(
            "username = \"sr-user\"\npassword = \"sr-pass\"\nca_file = \"{}\"\n\n[flush]\nmax_age = \"1s\"",
            ca.display()
        ),
    );
    let mut run = start(cfg);
    run.committed(&s.topic, &last_offsets(&produced)).await;
    let summary = run.stop().await;
    assert_eq!(summary.rejected, 0);
    let b = all_rows(&s).await;
    assert_eq!(b.num_rows(), 50);
    for r in 0..b.num_rows() {
        assert_order(&b, r, r as i64, false);
    }
}

/// Against the real broker and S3: Avro records naming a schema id the registry does
/// not have, cut short, not framed at all, or garbage after a valid header go to the
/// dead-letter table with their reasons; the good ones land exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_avro_frames_go_to_the_dead_letter_table_with_reasons() {
    let registry = TestRegistry::start(Some(("sr-user", "sr-pass"))).await;
    let s = Scenario::new("avro-dead", 1).await;
    let id = registry.register(&format!("{}-value", s.topic), "AVRO", ORDERS_V1);
    let good = |i: i64| frame(ORDERS_V1, id, order(i, false));
    let mut unknown = good(1);
    unknown[1..5].copy_from_slice(&999u32.to_be_bytes());
    let truncated = good(2)[..12].to_vec();
    let unframed = b"{\"id\": 3}".to_vec();
    let mut garbage = good(4)[..5].to_vec();
    garbage.extend_from_slice(&[0xff; 7]);
    // Offsets 0..=5: good, unknown id, truncated, unframed, garbage, good.
    let values = [good(0), unknown, truncated, unframed, garbage, good(5)];
    let produced = produce(
        &producer(&s.servers.brokers),
        &s.topic,
        values.iter().map(|v| (0, v.clone())),
    )
    .await;
    let dead_uri = format!("s3://{}/dead", s.bucket);
    let mut run = start(avro_config(
        &s,
        &registry,
        &format!("[dead_letters]\nuri = \"{dead_uri}\"\n[flush]\nmax_age = \"1s\""),
    ));
    run.committed(&s.topic, &last_offsets(&produced)).await;
    assert_eq!(run.stop().await.rejected, 4);
    assert_eq!(s.rows().await, vec![(0, 0), (0, 5)]);
    let dead = dead_letters(&s, &dead_uri).await;
    let got: Vec<(i64, Vec<u8>, &str)> = dead
        .iter()
        .map(|d| (d.1, d.2.clone(), d.3.as_str()))
        .collect();
    assert_eq!(
        got.iter().map(|g| (g.0, g.1.clone())).collect::<Vec<_>>(),
        (1..=4)
            .map(|o| (o, values[o as usize].clone()))
            .collect::<Vec<_>>(),
        "each bad record once, with its raw bytes"
    );
    let reason = |o: i64| dead.iter().find(|d| d.1 == o).unwrap().4.as_str();
    assert!(
        reason(1).contains("schema id 999") && reason(1).contains("40403"),
        "{}",
        reason(1)
    );
    assert!(reason(2).contains("invalid Avro"), "{}", reason(2));
    assert!(
        reason(3).contains("not Confluent wire format"),
        "{}",
        reason(3)
    );
    assert!(reason(4).contains("invalid Avro"), "{}", reason(4));
    for d in &dead {
        eprintln!("avro dead letter: offset {} {}: {}", d.1, d.3, d.4);
    }
}

/// A record's rejection can change between a first pass and a replay: a registry
/// answers 40403 for a schema it learns later (a follower behind the leader), or
/// forgets one (a hard delete). The dead letters of a window land before its rows;
/// if the rows never land (a crash between the two commits), the replay must leave
/// each record in exactly one of the two tables: the one rejected on the first pass
/// stays a dead letter even though it decodes now, and the one accepted then and
/// rejected now becomes a dead letter, though its offset is below the one the
/// dead-letter table holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_when_rejection_is_not_deterministic_keep_each_record_in_exactly_one_table() {
    let registry = TestRegistry::start(None).await;
    let s = Scenario::new("dead-nondet", 1).await;
    let s3 = s.storage_proxy().await;
    let id1 = registry.register(&format!("{}-value", s.topic), "AVRO", ORDERS_V1);
    // The same record under two more ids (another text: its doc string).
    let copy =
        |n: u32| ORDERS_V1.replacen("An order event", &format!("An order event (copy {n})"), 1);
    let id2 = registry.register("copies-value", "AVRO", &copy(2));
    let id3 = registry.register("copies-value", "AVRO", &copy(3));
    assert!(id1 != id2 && id2 != id3);
    // Offsets 0..=3: id1, id2 (unknown on the first pass), id3 (unknown on the
    // replay), id1.
    let values = [
        frame(ORDERS_V1, id1, order(0, false)),
        frame(&copy(2), id2, order(1, false)),
        frame(&copy(3), id3, order(2, false)),
        frame(ORDERS_V1, id1, order(3, false)),
    ];
    produce(
        &producer(&s.servers.brokers),
        &s.topic,
        values.iter().map(|v| (0, v.clone())),
    )
    .await;
    let dead_uri = format!("s3://{}/dead", s.bucket);
    let text = s
        .config_toml_via(
            &s3,
            &format!(
                "[decode]\nformat = \"avro\"\n\n[schema_registry]\nurl = \"{}\"\n\n\
                 [dead_letters]\nuri = \"{dead_uri}\"\n[flush]\nmax_age = \"1s\"\n\
                 [commit]\nmax_backoff = \"1s\"\n",
                registry.url()
            ),
        )
        .replace(
            &format!("schema_file = \"{}\"\n", demo_schema_path().display()),
            "",
        );
    let cfg = s.dir.path().join("dead-nondet.toml");
    std::fs::write(&cfg, text).unwrap();

    // First pass: id2 unknown. The dead letter lands; the rows' commit is cut,
    // then the process dies.
    registry.hide(id2, true);
    let mut daemon = Daemon::start(&cfg, s.dir.path());
    eventually(Duration::from_secs(60), "the table to open", || async {
        daemon
            .log_text()
            .lines()
            .any(|l| l.contains("table open") && !l.contains("dead-letter"))
            .then_some(())
    })
    .await;
    s3.refuse(Some(&format!("PUT /{}/events/_delta_log/", s.bucket)));
    eventually(
        Duration::from_secs(90),
        "the dead letter of offset 1",
        || async {
            let dead = dead_letters(&s, &dead_uri).await;
            (!dead.is_empty()).then_some(dead)
        },
    )
    .await;
    daemon.kill9();
    assert!(s.rows().await.is_empty(), "the rows' commit was cut");

    // Replay: id2 known now, id3 forgotten.
    registry.hide(id2, false);
    registry.hide(id3, true);
    s3.refuse(None);
    let mut daemon = Daemon::start(&cfg, s.dir.path());
    eventually(Duration::from_secs(120), "the replay to commit", || async {
        (s.stored_offsets(1).await[&0] == Some(3)).then_some(())
    })
    .await;
    daemon.stop_cleanly().await;

    let rows: Vec<i64> = s.rows().await.into_iter().map(|(_, o)| o).collect();
    let dead: Vec<i64> = dead_letters(&s, &dead_uri)
        .await
        .into_iter()
        .map(|d| d.1)
        .collect();
    eprintln!("non-deterministic rejection: rows at offsets {rows:?}, dead letters at {dead:?}");
    assert_eq!(
        rows,
        vec![0, 3],
        "offset 1 (rejected first) must not become a row"
    );
    assert_eq!(
        dead,
        vec![1, 2],
        "offset 2 (rejected on the replay) must be kept"
    );

    // verify agrees: every record in exactly one table.
    let config =
        tributary::config::RawConfig::parse(&std::fs::read_to_string(&cfg).unwrap(), None, &|_| {
            None
        })
        .unwrap()
        .validate()
        .unwrap();
    let report = tributary::ops::verify::verify(&config, Duration::from_secs(30))
        .await
        .unwrap();
    let p = &report.partitions[0];
    eprintln!("verify: {}", tributary::ops::verify::render(&report));
    assert!(report.clean);
    assert_eq!((p.rows, p.rejected, p.gaps, p.in_both), (2, 2, 0, 0));
}

/// `verify` judges missing records with the configured format and transforms: for
/// Avro, a row lost from the table is a gap (the JSON decoder it used to apply
/// rejected every Avro record, so any loss was counted as a rejection and the
/// report said clean), a record the filter drops is filtered, and a bad frame is
/// rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_avro_decodes_with_the_configured_format_and_accounts_for_filtered_rows() {
    let registry = TestRegistry::start(None).await;
    let s = Scenario::new("verify-avro", 1).await;
    let id = registry.register(&format!("{}-value", s.topic), "AVRO", ORDERS_V1);
    // Offsets 0..=5: good, good, good (lost later), a bad frame, good (filtered
    // out: id 4), good.
    let mut values: Vec<Vec<u8>> = (0..6)
        .map(|i| frame(ORDERS_V1, id, order(i, false)))
        .collect();
    values[3] = b"not avro".to_vec();
    let produced = produce(
        &producer(&s.servers.brokers),
        &s.topic,
        values.iter().map(|v| (0, v.clone())),
    )
    .await;
    let text = s
        .config_toml(&format!(
            "[decode]\nformat = \"avro\"\n\n[schema_registry]\nurl = \"{}\"\n\n[flush]\nmax_age = \"1s\"\n",
            registry.url()
        ))
        .replace(
            &format!("schema_file = \"{}\"\n", demo_schema_path().display()),
            "filter = \"id <> 4\"\n",
        );
    let cfg = parse_config(&text);
    let mut run = start(cfg.clone());
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await;
    assert_eq!(s.rows().await, vec![(0, 0), (0, 1), (0, 2), (0, 5)]);

    let clean = tributary::ops::verify::verify(&cfg, Duration::from_secs(30))
        .await
        .unwrap();
    let p = &clean.partitions[0];
    assert!(clean.clean, "{}", tributary::ops::verify::render(&clean));
    assert_eq!((p.gaps, p.rejected, p.filtered), (0, 1, 1));

    // Lose a row: verify must see a gap, not a rejection.
    let t = s.table().await.unwrap();
    t.delete().with_predicate("_offset = 2").await.unwrap();
    let lossy = tributary::ops::verify::verify(&cfg, Duration::from_secs(30))
        .await
        .unwrap();
    eprintln!(
        "verify after losing offset 2:\n{}",
        tributary::ops::verify::render(&lossy)
    );
    let p = &lossy.partitions[0];
    assert!(!lossy.clean);
    assert_eq!((p.gaps, p.gap_sample.clone()), (1, vec![2]));
    assert_eq!((p.rejected, p.filtered), (1, 1));
}

/// A `{topic}` table with no schema file is created from the registry's schema at
/// its topic's first assignment. With the registry unreachable then, the daemon
/// must keep running and create the table once the registry answers (it used to
/// exit with the registry error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assign_errors_with_the_registry_unreachable_are_retried_until_the_table_is_created() {
    let registry = TestRegistry::start(None).await;
    let s = Scenario::new("assign-registry", 1).await;
    let id = registry.register(&format!("{}-value", s.topic), "AVRO", ORDERS_V1);
    let proxy = Outage::start(&registry.addr.to_string()).await;
    let produced = produce(
        &producer(&s.servers.brokers),
        &s.topic,
        (0..20).map(|i| (0, frame(ORDERS_V1, id, order(i, false)))),
    )
    .await;
    let uri = format!("s3://{}/t/{}", s.bucket, s.topic);
    let text = s
        .config_toml(&format!(
            "[decode]\nformat = \"avro\"\n\n[schema_registry]\nurl = \"http://{}\"\n\n\
             [flush]\nmax_age = \"500ms\"\n[commit]\nmax_backoff = \"1s\"\n",
            proxy.addr
        ))
        .replace(
            &format!("schema_file = \"{}\"\n", demo_schema_path().display()),
            "",
        )
        .replace(&s.table_uri(), &format!("s3://{}/t/{{topic}}", s.bucket));
    let cfg = s.dir.path().join("assign-registry.toml");
    std::fs::write(&cfg, text).unwrap();
    proxy.take_down();
    let mut daemon = Daemon::start(&cfg, s.dir.path());
    log_shows(
        &mut daemon,
        "cannot open the partition's table; will retry",
        Duration::from_secs(60),
    )
    .await;
    proxy.bring_up();
    let rows = eventually(
        Duration::from_secs(90),
        "the table created and filled",
        || async {
            let rows = s.rows_at(&uri).await;
            (rows.len() >= 20).then_some(rows)
        },
    )
    .await;
    daemon.stop_cleanly().await;
    let (lost, duplicated) = diff(&rows, &produced);
    eprintln!(
        "assign errors (registry unreachable): table created after the registry came back; \
         {} rows, lost {lost}, duplicated {duplicated}",
        rows.len()
    );
    assert_eq!((rows.len(), lost, duplicated), (20, 0, 0));
}

/// `tributary restore` past a schema change brings the old schema back with the
/// old files; the replayed records of the newer producer schema then add their
/// column again, as they did the first time, and fill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_past_a_schema_change_evolves_the_table_again_on_replay() {
    use tributary::ops::restore::{self, RestoreTarget};
    let registry = TestRegistry::start(None).await;
    let s = Scenario::new("avro-restore", 1).await;
    let subject = format!("{}-value", s.topic);
    let v1 = registry.register(&subject, "AVRO", ORDERS_V1);
    let producer = producer(&s.servers.brokers);
    let mut produced = produce(
        &producer,
        &s.topic,
        (0..100).map(|i| (0, frame(ORDERS_V1, v1, order(i, false)))),
    )
    .await;
    let cfg = avro_config(&s, &registry, "[flush]\nmax_age = \"1s\"");
    let mut run = start(cfg.clone());
    run.committed(&s.topic, &last_offsets(&produced)).await;
    let before_change = s.version().await.unwrap();
    let v2 = registry.register(&subject, "AVRO", ORDERS_V2);
    let more = produce(
        &producer,
        &s.topic,
        (100..200).map(|i| (0, frame(ORDERS_V2, v2, order(i, true)))),
    )
    .await;
    produced.get_mut(&0).unwrap().extend(&more[&0]);
    run.committed(&s.topic, &last_offsets(&produced)).await;
    run.stop().await;
    let has_email =
        |t: &deltalake::DeltaTable| t.snapshot().unwrap().schema().field("email").is_some();
    assert!(has_email(&s.table().await.unwrap()));

    let timeout = Duration::from_secs(10);
    restore::restore(
        &cfg,
        RestoreTarget::Version(before_change),
        false,
        false,
        timeout,
    )
    .await
    .unwrap();
    assert!(!has_email(&s.table().await.unwrap()), "v1's schema is back");
    assert_eq!(all_rows(&s).await.num_rows(), 100);

    let mut run = start(cfg.clone());
    run.committed(&s.topic, &last_offsets(&produced)).await;
    let summary = run.stop().await;
    assert_eq!((summary.records, summary.rows), (100, 100));
    assert!(
        has_email(&s.table().await.unwrap()),
        "evolved again on replay"
    );
    let b = all_rows(&s).await;
    assert_eq!(b.num_rows(), 200);
    let emails = col(&b, "email").as_string::<i32>();
    for r in 0..b.num_rows() {
        let i = r as i64;
        assert_order(&b, r, i, i >= 100);
        assert_eq!(!emails.is_null(r), i >= 100 && i % 2 == 0, "row {i}");
    }
}

/// An upsert table through the registry: created from the subject's Avro schema,
/// keyed by the record's `id`; the producer moves to v2 mid-stream (a column is
/// added), later changes of a key replace its row, and `verify` replays the
/// topic through the registry and finds every key at its last change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_upserts_through_the_registry_take_an_added_column() {
    let registry = TestRegistry::start(Some(("sr-user", "sr-pass"))).await;
    let s = Scenario::new("avro-upsert", 1).await;
    let subject = format!("{}-value", s.topic);
    let v1 = registry.register(&subject, "AVRO", ORDERS_V1);
    let producer = producer(&s.servers.brokers);
    let mut produced = produce(
        &producer,
        &s.topic,
        (0..50).map(|i| (0, frame(ORDERS_V1, v1, order(i, false)))),
    )
    .await;
    let mut cfg = avro_config(&s, &registry, "[flush]\nmax_age = \"1s\"");
    cfg.table.upsert = Some(tributary::config::UpsertSpec {
        key: vec!["id".into()],
        order_by: None,
        envelope: Default::default(),
        source_order: None,
        delete_horizon: Duration::ZERO,
        strategy: Default::default(),
    });
    let mut run = start(cfg.clone());
    run.committed(&s.topic, &last_offsets(&produced)).await;

    // v2 adds `email`: the first 20 orders change, 10 new ones arrive.
    let v2 = registry.register(&subject, "AVRO", ORDERS_V2);
    let changes: Vec<(i32, Vec<u8>)> = (0..20)
        .chain(50..60)
        .map(|i| (0, frame(ORDERS_V2, v2, order(i, true))))
        .collect();
    produced = produce(&producer, &s.topic, changes).await;
    run.committed(&s.topic, &last_offsets(&produced)).await;
    let summary = run.stop().await;
    assert_eq!(summary.rejected, 0);
    assert!(s.operations().await.iter().any(|o| o == "MERGE"));

    let b = all_rows(&s).await;
    assert_eq!(b.num_rows(), 60, "one row per id");
    let emails = col(&b, "email").as_string::<i32>();
    for r in 0..b.num_rows() {
        let i = col(&b, "id").as_primitive::<Int64Type>().value(r);
        let v2 = !(20..50).contains(&i);
        assert_order(&b, r, i, v2);
        assert_eq!(emails.is_null(r), !v2 || i % 2 == 1, "row {i}");
    }
    let report = tributary::ops::verify::verify(&cfg, Duration::from_secs(30))
        .await
        .unwrap();
    let keys = report.upsert.as_ref().unwrap();
    assert!(report.clean, "{}", tributary::ops::verify::render(&report));
    assert_eq!(keys.partitions.iter().map(|p| p.keys).sum::<u64>(), 60);
    assert!(
        keys.compared_columns.iter().any(|c| c == "email"),
        "{keys:?}"
    );
}
