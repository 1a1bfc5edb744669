//! The bench's events: `schemas/bench_events.json`, 12 mixed-type fields, about
//! 260 bytes as JSON, or the same as Confluent-framed Avro.

/// The Avro schema of the events.
pub const BENCH_AVRO: &str = include_str!("../../schemas/bench_events.avsc");

const KINDS: [&str; 4] = ["view", "click", "purchase", "signup"];
const COUNTRIES: [&str; 6] = ["DE", "US", "FR", "JP", "BR", "IN"];
const DEVICES: [&str; 3] = ["android", "ios", "web"];

/// Event `i` as JSON, into `out`.
pub fn json(i: u64, out: &mut String) {
    use std::fmt::Write;
    out.clear();
    let _ = write!(
        out,
        "{{\"event_id\":{i},\"user_id\":\"user-{:06}\",\"session_id\":\"{:016x}\",\"kind\":\"{}\",\
         \"country\":\"{}\",\"device\":\"{}\",\"page\":\"/products/category-{}/item-{}\",\
         \"amount\":{}.{:02},\"score\":{:.6},\"quantity\":{},\"is_mobile\":{},\
         \"ts\":\"2026-11-29T12:{:02}:{:02}.{:06}Z\"}}",
        i % 100_000,
        i.wrapping_mul(2_654_435_761),
        KINDS[(i % 4) as usize],
        COUNTRIES[(i % 6) as usize],
        DEVICES[(i % 3) as usize],
        i % 50,
        i % 10_000,
        i % 1000,
        i % 100,
        (i % 1000) as f64 / 1000.0,
        i % 20,
        i.is_multiple_of(3),
        (i / 60) % 60,
        i % 60,
        i % 1_000_000,
    );
}

/// Event `i` as Confluent-framed Avro (schema id `id`), into `out`.
#[allow(deprecated)] // GenericDatumWriter's builder is the new spelling; same bytes
pub fn avro(schema: &apache_avro::Schema, id: u32, i: u64, out: &mut Vec<u8>) {
    use apache_avro::types::Value as Av;
    let some = |v: Av| Av::Union(1, Box::new(v));
    let s = |v: String| some(Av::String(v));
    let cents = ((i % 1000) * 100 + i % 100) as i64;
    let ts = 1_795_953_600_000_000i64
        + ((i / 60) % 60 * 60 + i % 60) as i64 * 1_000_000
        + (i % 1_000_000) as i64;
    let record = Av::Record(vec![
        ("event_id".into(), Av::Long(i as i64)),
        ("user_id".into(), s(format!("user-{:06}", i % 100_000))),
        (
            "session_id".into(),
            s(format!("{:016x}", i.wrapping_mul(2_654_435_761))),
        ),
        ("kind".into(), s(KINDS[(i % 4) as usize].into())),
        ("country".into(), s(COUNTRIES[(i % 6) as usize].into())),
        ("device".into(), s(DEVICES[(i % 3) as usize].into())),
        (
            "page".into(),
            s(format!("/products/category-{}/item-{}", i % 50, i % 10_000)),
        ),
        (
            "amount".into(),
            some(Av::Decimal(cents.to_be_bytes().to_vec().into())),
        ),
        ("score".into(), some(Av::Double((i % 1000) as f64 / 1000.0))),
        ("quantity".into(), some(Av::Int((i % 20) as i32))),
        ("is_mobile".into(), some(Av::Boolean(i.is_multiple_of(3)))),
        ("ts".into(), some(Av::TimestampMicros(ts))),
    ]);
    out.clear();
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend(apache_avro::to_avro_datum(schema, record).expect("event matches its schema"));
}
