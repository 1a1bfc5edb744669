//! Register the orders Avro schema with a Confluent-compatible schema registry and
//! produce Confluent-framed Avro orders (magic byte 0, schema id, Avro binary), the
//! way a Java or Python producer with the registry's serializer does. Ingest them
//! with `examples/config/orders-avro.toml`.
//!
//! ```sh
//! cargo run --example produce_avro -- 127.0.0.1:9092 http://127.0.0.1:8081 orders 100000
//! cargo run --example produce_avro -- 127.0.0.1:9092 http://127.0.0.1:8081 orders 1000 v2
//! ```
//!
//! `v2` registers `schemas/orders-v2.avsc` (adds `email`, makes `name` optional) and
//! sends v2 records: the table gains the column on the fly.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use apache_avro::types::Value;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use schema_registry_converter::async_impl::schema_registry::{SrSettings, post_schema};
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

const V1: &str = include_str!("../schemas/orders-v1.avsc");
const V2: &str = include_str!("../schemas/orders-v2.avsc");

fn union(v: Option<Value>) -> Value {
    match v {
        Some(v) => Value::Union(1, Box::new(v)),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

/// Order `i`, in the v1 or v2 shape.
fn order(i: i64, v2: bool) -> Value {
    let name = Value::String(format!("customer {}", i % 1000));
    let mut fields = vec![
        ("id", Value::Long(i)),
        ("name", if v2 { union(Some(name)) } else { name }),
        ("qty", Value::Int(1 + (i % 5) as i32)),
        ("price", Value::Float(9.5)),
        ("ratio", Value::Double(0.25)),
        ("paid", Value::Boolean(i % 3 != 0)),
        ("blob", Value::Bytes(vec![])),
        (
            "amount",
            Value::Decimal((1999 + i % 100).to_be_bytes().to_vec().into()),
        ),
        ("day", Value::Date(20_000 + (i % 365) as i32)),
        ("ts_ms", Value::TimestampMillis(1_735_689_600_000 + i)),
        ("ts_us", Value::TimestampMicros(1_735_689_600_000_000 + i)),
        ("uid", Value::Uuid(uuid::Uuid::new_v4())),
        (
            "attrs",
            Value::Map(HashMap::from([("items".to_owned(), Value::Long(i % 5))])),
        ),
        ("tags", Value::Array(vec![Value::String("web".into())])),
        (
            "address",
            Value::Record(vec![
                ("street".into(), Value::String("1 Main St".into())),
                ("zip".into(), union(Some(Value::Int(10_115)))),
            ]),
        ),
        ("note", union(None)),
        ("status", Value::Enum(0, "ACTIVE".into())),
    ];
    if v2 {
        fields.push((
            "email",
            union(Some(Value::String(format!("c{i}@example.com")))),
        ));
    }
    Value::Record(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (brokers, registry, topic, count, v2) = match args.as_slice() {
        [b, r, t, c] => (b, r, t, c, false),
        [b, r, t, c, v] if v == "v2" => (b, r, t, c, true),
        _ => bail!("usage: produce_avro BROKERS REGISTRY_URL TOPIC COUNT [v2]"),
    };
    let count: i64 = count.parse().context("COUNT must be a number")?;
    let text = if v2 { V2 } else { V1 };
    let schema = apache_avro::Schema::parse_str(text)?;

    // Register under the topic's value subject, as the Confluent serializer does.
    let settings = SrSettings::new(registry.trim_end_matches('/').to_owned());
    let registered = post_schema(
        &settings,
        format!("{topic}-value"),
        SuppliedSchema::new(None, SchemaType::Avro, text.to_owned()),
    )
    .await
    .map_err(|e| anyhow::anyhow!("registering the schema: {e}"))?;
    println!(
        "schema registered as id {} under {topic}-value",
        registered.id
    );

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "10")
        .create()?;
    let start = Instant::now();
    let mut pending = Vec::with_capacity(1000);
    for i in 0..count {
        let mut payload = vec![0u8];
        payload.extend_from_slice(&registered.id.to_be_bytes());
        #[allow(deprecated)] // GenericDatumWriter's builder is the new spelling; same bytes
        payload.extend(apache_avro::to_avro_datum(&schema, order(i, v2))?);
        let key = format!("order-{i}");
        let producer = producer.clone();
        let topic = topic.clone();
        pending.push(async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
        });
        if pending.len() == 1000 || i + 1 == count {
            for r in futures::future::join_all(pending.drain(..)).await {
                r?;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "produced {count} Avro orders to {topic} in {secs:.1}s ({:.0}/s)",
        count as f64 / secs
    );
    Ok(())
}
