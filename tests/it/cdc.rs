//! Debezium change events through the schema registry (the Avro, JSON Schema
//! and Protobuf converters): the table is created from the envelope's `after`
//! record, takes a column the source table gained, and holds each key's last
//! change by the source's own order; `verify` replays the topic through the
//! registry and agrees.

use std::collections::BTreeMap;
use std::time::Duration;

use apache_avro::types::Value as Av;
use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::{DataType, Int32Type, Int64Type};

use crate::formats::frame;
use crate::harness::*;
use crate::ingest::{dead_letters, start};
use crate::registry::TestRegistry;

const CUSTOMERS_V1: &str = include_str!("../../schemas/customers-debezium-v1.avsc");
const CUSTOMERS_V2: &str = include_str!("../../schemas/customers-debezium-v2.avsc");

fn union(v: Option<Av>) -> Av {
    match v {
        Some(v) => Av::Union(1, Box::new(v)),
        None => Av::Union(0, Box::new(Av::Null)),
    }
}

/// Customer `id`'s row; v2 rows carry an email.
fn customer(id: i32, name: &str, v2: bool) -> Av {
    let mut fields = vec![
        ("id".to_owned(), Av::Int(id)),
        ("first_name".to_owned(), Av::String(name.to_owned())),
        ("last_name".to_owned(), Av::String(format!("last {id}"))),
        ("updated_at".to_owned(), Av::Long(1_700_000_000_000_000)),
    ];
    if v2 {
        fields.push((
            "email".to_owned(),
            union(Some(Av::String(format!("{name}@example.com")))),
        ));
    }
    Av::Record(fields)
}

/// A Debezium PostgreSQL envelope: `op` on `id` at `lsn`; `before` for a
/// delete, `after` otherwise.
fn event(op: &str, id: i32, name: &str, lsn: i64, v2: bool) -> Av {
    let row = Some(customer(id, name, v2));
    let (before, after) = if op == "d" { (row, None) } else { (None, row) };
    let source = Av::Record(vec![
        ("version".into(), Av::String("2.7.3.Final".into())),
        ("connector".into(), Av::String("postgresql".into())),
        ("name".into(), Av::String("dbserver1".into())),
        ("ts_ms".into(), Av::Long(1_700_000_000_000 + lsn)),
        (
            "snapshot".into(),
            Av::Union(
                0,
                Box::new(Av::String(if op == "r" { "true" } else { "false" }.into())),
            ),
        ),
        ("db".into(), Av::String("postgres".into())),
        ("sequence".into(), union(None)),
        ("schema".into(), Av::String("inventory".into())),
        ("table".into(), Av::String("customers".into())),
        ("txId".into(), union(Some(Av::Long(700 + lsn)))),
        ("lsn".into(), union(Some(Av::Long(lsn)))),
        ("xmin".into(), union(None)),
    ]);
    Av::Record(vec![
        ("before".into(), union(before)),
        ("after".into(), union(after)),
        ("source".into(), source),
        ("op".into(), Av::String(op.into())),
        ("ts_ms".into(), union(Some(Av::Long(1_700_000_000_500)))),
        ("transaction".into(), union(None)),
    ])
}

/// The scenario's config: `format` through `registry`, an upsert table keyed
/// by `id` with `envelope` (its lines), windows of a second, and `extra`.
pub(crate) fn upsert_config(
    s: &Scenario,
    registry: &TestRegistry,
    format: &str,
    envelope: &str,
    extra: &str,
) -> tributary::config::Config {
    let text = s
        .config_toml(&format!(
            "[decode]\nformat = \"{format}\"\n\n[schema_registry]\nurl = \"{}\"\n\n\
             [flush]\nmax_age = \"1s\"\n\n{extra}",
            registry.url()
        ))
        .replace(
            &format!("schema_file = \"{}\"\n", demo_schema_path().display()),
            &format!("mode = \"upsert\"\nkey = [\"id\"]\n{envelope}\n"),
        );
    parse_config(&text)
}

/// id -> (first_name, email, _source_lsn), from the table; a key twice fails.
async fn customers(s: &Scenario) -> BTreeMap<i32, (String, Option<String>, i64)> {
    let t = s.table().await.unwrap();
    let mut out = BTreeMap::new();
    let sql = "SELECT id, first_name, email, _source_lsn FROM t";
    for b in query(&t, sql).await {
        let text =
            |c: usize| deltalake::arrow::compute::cast(b.column(c), &DataType::Utf8).unwrap();
        let (names, emails) = (text(1), text(2));
        let (names, emails) = (names.as_string::<i32>(), emails.as_string::<i32>());
        for r in 0..b.num_rows() {
            let id = b.column(0).as_primitive::<Int32Type>().value(r);
            let row = (
                names.value(r).to_owned(),
                emails.is_valid(r).then(|| emails.value(r).to_owned()),
                b.column(3).as_primitive::<Int64Type>().value(r),
            );
            assert!(out.insert(id, row).is_none(), "customer {id} twice");
        }
    }
    out
}

/// Debezium Avro through the registry, ordered by `source.lsn`: the table is
/// created from `after` (the key required, no envelope columns), an added
/// column evolves it, updates and deletes (with Debezium's tombstones) apply,
/// a key deleted and created again in one window is there, an older event is
/// ignored, an unknown op is a dead letter with its reason, and `verify`
/// (which decodes through the registry as the daemon does) finds it exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_avro_through_the_registry_creates_the_table_from_after_and_evolves() {
    let registry = TestRegistry::start(None).await;
    let s = Scenario::new("dbz-avro", 1).await;
    let subject = format!("{}-value", s.topic);
    let v1 = registry.register(&subject, "AVRO", CUSTOMERS_V1);
    let dead_uri = format!("s3://{}/dead_letters", s.bucket);
    let cfg = upsert_config(
        &s,
        &registry,
        "avro",
        "envelope = \"debezium\"\norder_by = \"source.lsn\"",
        &format!("[dead_letters]\nuri = \"{dead_uri}\""),
    );
    let one = |op: &str, id: i32, name: &str, lsn: i64| {
        Some(frame(CUSTOMERS_V1, v1, event(op, id, name, lsn, false)))
    };
    let first = [
        (0, "1", one("c", 1, "ann", 10)),
        (0, "2", one("c", 2, "bob", 11)),
        (0, "3", one("r", 3, "cy", 12)),
        (0, "4", one("c", 4, "dee", 13)),
        (0, "5", one("c", 5, "eve", 14)),
    ];
    let mut run = start(cfg.clone());
    let produced = produce_keyed(&s, &first).await;
    run.committed(&s.topic, &last_offsets(&produced)).await;

    // The source table gains `email`: Debezium registers v2.
    let v2 = registry.register(&subject, "AVRO", CUSTOMERS_V2);
    let two = |op: &str, id: i32, name: &str, lsn: i64| {
        Some(frame(CUSTOMERS_V2, v2, event(op, id, name, lsn, true)))
    };
    let second = [
        (0, "1", two("u", 1, "ann2", 20)),
        (0, "2", two("d", 2, "bob", 21)),
        (0, "2", None),                    // Debezium's tombstone after the delete
        (0, "3", two("u", 3, "stale", 5)), // older than the row: ignored
        (0, "4", two("d", 4, "dee", 22)),
        (0, "4", None),
        (0, "4", two("c", 4, "dee2", 23)), // created again
        (0, "6", two("c", 6, "fay", 24)),
        (0, "7", two("x", 7, "bad", 25)), // not an op
    ];
    let produced = produce_keyed(&s, &second).await;
    run.committed(&s.topic, &last_offsets(&produced)).await;
    let summary = run.stop().await;
    assert_eq!(summary.rejected, 1, "the unknown op");

    let email = |name: &str| Some(format!("{name}@example.com"));
    let want: BTreeMap<i32, (String, Option<String>, i64)> = [
        (1, ("ann2".to_owned(), email("ann2"), 20)),
        (3, ("cy".to_owned(), None, 12)),
        (4, ("dee2".to_owned(), email("dee2"), 23)),
        (5, ("eve".to_owned(), None, 14)),
        (6, ("fay".to_owned(), email("fay"), 24)),
    ]
    .into();
    assert_eq!(customers(&s).await, want);

    // The table holds the row, not the envelope; its key is required.
    let t = s.table().await.unwrap();
    let schema = t.snapshot().unwrap().schema();
    let names: Vec<&str> = schema.fields().map(|f| f.name().as_str()).collect();
    for column in [
        "id",
        "first_name",
        "last_name",
        "updated_at",
        "email",
        "_source_lsn",
    ] {
        assert!(names.contains(&column), "{column} in {names:?}");
    }
    for envelope in ["before", "after", "op", "source", "ts_ms", "transaction"] {
        assert!(!names.contains(&envelope), "{envelope} in {names:?}");
    }
    assert!(!schema.field("id").unwrap().is_nullable());

    let dead = dead_letters(&s, &dead_uri).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].1, 13);
    assert!(dead[0].4.contains("unknown Debezium op `x`"), "{dead:?}");

    let report = tributary::ops::verify::verify(&cfg, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(report.clean, "{}", tributary::ops::verify::render(&report));
    let keys = report.upsert.expect("an upsert table's report");
    assert_eq!(keys.partitions.iter().map(|p| p.keys).sum::<u64>(), 5);
    assert!(
        keys.compared_columns.iter().any(|c| c == "email"),
        "{keys:?}"
    );
}

/// `ExtractNewRecordState` with `delete.handling.mode=rewrite` and
/// `add.fields=op,lsn`, as the Avro converter registers it.
const FLAT: &str = r#"{"type": "record", "name": "Value", "namespace": "dbserver1.inventory.customers",
  "fields": [
    {"name": "id", "type": "int"},
    {"name": "first_name", "type": "string"},
    {"name": "__op", "type": ["null", "string"], "default": null},
    {"name": "__lsn", "type": ["null", "long"], "default": null},
    {"name": "__deleted", "type": ["null", "string"], "default": null}
  ]}"#;

/// Flattened Debezium rows through the registry: the table is created from
/// the row without the `__` markers, and `__deleted` deletes its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flattened_debezium_avro_through_the_registry_deletes_by_its_marker() {
    let registry = TestRegistry::start(None).await;
    let s = Scenario::new("dbz-flat-avro", 1).await;
    let id = registry.register(&format!("{}-value", s.topic), "AVRO", FLAT);
    let cfg = upsert_config(
        &s,
        &registry,
        "avro",
        "envelope = \"debezium-flattened\"",
        "",
    );
    let row = |op: &str, k: i32, name: &str| {
        let fields = vec![
            ("id".to_owned(), Av::Int(k)),
            ("first_name".to_owned(), Av::String(name.to_owned())),
            ("__op".to_owned(), union(Some(Av::String(op.into())))),
            ("__lsn".to_owned(), union(Some(Av::Long(100 + k as i64)))),
            (
                "__deleted".to_owned(),
                union(Some(Av::String((op == "d").to_string()))),
            ),
        ];
        Some(frame(FLAT, id, Av::Record(fields)))
    };
    let records = [
        (0, "1", row("c", 1, "ann")),
        (0, "2", row("c", 2, "bob")),
        (0, "3", row("r", 3, "cy")),
        (0, "1", row("u", 1, "ann2")),
        (0, "2", row("d", 2, "bob")),
    ];
    let mut run = start(cfg.clone());
    let produced = produce_keyed(&s, &records).await;
    run.committed(&s.topic, &last_offsets(&produced)).await;
    assert_eq!(run.stop().await.rejected, 0);

    let t = s.table().await.unwrap();
    let names: Vec<String> = t
        .snapshot()
        .unwrap()
        .schema()
        .fields()
        .map(|f| f.name().clone())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("__")), "{names:?}");
    let mut got = Vec::new();
    for b in query(&t, "SELECT id, first_name FROM t ORDER BY id").await {
        let n = deltalake::arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
        for r in 0..b.num_rows() {
            got.push((
                b.column(0).as_primitive::<Int32Type>().value(r),
                n.as_string::<i32>().value(r).to_owned(),
            ));
        }
    }
    assert_eq!(got, [(1, "ann2".to_owned()), (3, "cy".to_owned())]);
    let report = tributary::ops::verify::verify(&cfg, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(report.clean, "{}", tributary::ops::verify::render(&report));
}

/// The changes of the JSON Schema and Protobuf runs, all in partition 0:
/// (Kafka key, (op, id, first_name, lsn)), `None` for Debezium's tombstone.
type Change = (&'static str, Option<(&'static str, i32, &'static str, i64)>);
const CHANGES: [Change; 8] = [
    ("1", Some(("c", 1, "ann", 10))),
    ("2", Some(("c", 2, "bob", 11))),
    ("3", Some(("r", 3, "cy", 12))),
    ("1", Some(("u", 1, "ann2", 20))),
    ("2", Some(("d", 2, "bob", 21))),
    ("2", None),
    ("3", Some(("u", 3, "stale", 5))), // older than the row: ignored
    ("4", Some(("c", 4, "dee", 22))),
];

/// [`CHANGES`] as Debezium events of `format`, registered as `kind` with
/// `text` and framed by `encode(schema id, op, id, name, lsn)`, ordered by
/// `source.lsn`: the table is created from `after` (key required, no envelope
/// column), holds each key's last change, and `verify` agrees.
async fn debezium_through_the_registry(
    name: &str,
    (format, kind, text): (&str, &str, &str),
    encode: impl Fn(u32, &str, i32, &str, i64) -> Vec<u8>,
) {
    let registry = TestRegistry::start(None).await;
    let s = Scenario::new(name, 1).await;
    let id = registry.register(&format!("{}-value", s.topic), kind, text);
    let envelope = "envelope = \"debezium\"\norder_by = \"source.lsn\"";
    let cfg = upsert_config(&s, &registry, format, envelope, "");
    let records: Vec<(i32, &str, Option<Vec<u8>>)> = CHANGES
        .iter()
        .map(|(key, c)| (0, *key, c.map(|(op, k, n, lsn)| encode(id, op, k, n, lsn))))
        .collect();
    let mut run = start(cfg.clone());
    let produced = produce_keyed(&s, &records).await;
    run.committed(&s.topic, &last_offsets(&produced)).await;
    assert_eq!(run.stop().await.rejected, 0);

    let t = s.table().await.unwrap();
    let schema = t.snapshot().unwrap().schema();
    let names: Vec<&str> = schema.fields().map(|f| f.name().as_str()).collect();
    for column in ["id", "first_name", "_source_lsn"] {
        assert!(names.contains(&column), "{column} in {names:?}");
    }
    for envelope in ["before", "after", "op", "source", "ts_ms"] {
        assert!(!names.contains(&envelope), "{envelope} in {names:?}");
    }
    assert!(!schema.field("id").unwrap().is_nullable());
    let mut got = Vec::new();
    let sql = "SELECT CAST(id AS BIGINT), first_name, _source_lsn FROM t ORDER BY 1";
    for b in query(&t, sql).await {
        let n = deltalake::arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
        for r in 0..b.num_rows() {
            got.push((
                b.column(0).as_primitive::<Int64Type>().value(r),
                n.as_string::<i32>().value(r).to_owned(),
                b.column(2).as_primitive::<Int64Type>().value(r),
            ));
        }
    }
    let want = [(1, "ann2", 20), (3, "cy", 12), (4, "dee", 22)];
    let want: Vec<(i64, String, i64)> = want.map(|(k, n, l)| (k, n.to_owned(), l)).into();
    assert_eq!(got, want);

    let report = tributary::ops::verify::verify(&cfg, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(report.clean, "{}", tributary::ops::verify::render(&report));
    let keys = report.upsert.expect("an upsert table's report");
    assert_eq!(keys.partitions.iter().map(|p| p.keys).sum::<u64>(), 3);
}

/// The 5-byte Confluent header of schema `id`, then `body`.
fn confluent(id: u32, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_json_schema_through_the_registry_creates_the_table_from_after() {
    let text = include_str!("../../schemas/customers-debezium.schema.json");
    let encode = |id: u32, op: &str, k: i32, name: &str, lsn: i64| {
        let row = serde_json::json!({"id": k, "first_name": name});
        let (before, after) = match op {
            "d" => (row, serde_json::Value::Null),
            _ => (serde_json::Value::Null, row),
        };
        let event = serde_json::json!({
            "before": before,
            "after": after,
            "source": {
                "version": "2.7.3.Final", "connector": "postgresql", "name": "dbserver1",
                "ts_ms": 1_700_000_000_000i64 + lsn, "db": "postgres", "schema": "inventory",
                "table": "customers", "txId": 700 + lsn, "lsn": lsn,
            },
            "op": op,
            "ts_ms": 1_700_000_000_500i64,
        });
        confluent(id, event.to_string().as_bytes())
    };
    debezium_through_the_registry("dbz-json-schema", ("json_schema", "JSON", text), encode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debezium_protobuf_through_the_registry_creates_the_table_from_after() {
    use prost_reflect::{DynamicMessage, Value as Pv};
    use protox::prost::Message;
    let text = include_str!("../../schemas/customers-debezium.proto");
    let envelope = tributary::decode::registry::protobuf::compile(text, &[])
        .unwrap()
        .remove(0);
    let sub = |f: &str| {
        let field = envelope.get_field_by_name(f).unwrap();
        field.kind().as_message().unwrap().clone()
    };
    let encode = |id: u32, op: &str, k: i32, name: &str, lsn: i64| {
        let mut row = DynamicMessage::new(sub("after"));
        row.set_field_by_name("id", Pv::I32(k));
        row.set_field_by_name("first_name", Pv::String(name.into()));
        let mut source = DynamicMessage::new(sub("source"));
        for (f, v) in [
            ("version", "2.7.3.Final"),
            ("connector", "postgresql"),
            ("name", "dbserver1"),
            ("db", "postgres"),
            ("schema", "inventory"),
            ("table", "customers"),
        ] {
            source.set_field_by_name(f, Pv::String(v.into()));
        }
        source.set_field_by_name("ts_ms", Pv::I64(1_700_000_000_000 + lsn));
        source.set_field_by_name("txId", Pv::I64(700 + lsn));
        source.set_field_by_name("lsn", Pv::I64(lsn));
        let mut m = DynamicMessage::new(envelope.clone());
        let side = if op == "d" { "before" } else { "after" };
        m.set_field_by_name(side, Pv::Message(row));
        m.set_field_by_name("source", Pv::Message(source));
        m.set_field_by_name("op", Pv::String(op.into()));
        m.set_field_by_name("ts_ms", Pv::I64(1_700_000_000_500));
        // message indexes [0] (the single byte 0), then the message
        let mut body = vec![0];
        body.extend(m.encode_to_vec());
        confluent(id, &body)
    };
    debezium_through_the_registry("dbz-protobuf", ("protobuf", "PROTOBUF", text), encode).await;
}
