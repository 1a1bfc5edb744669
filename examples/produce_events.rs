//! Produce sample JSON events (the `schemas/demo_events.json` shape) to a Kafka
//! topic, to try `tributary ingest` against a real broker.
//!
//! ```sh
//! cargo run --example produce_events -- 127.0.0.1:9092 events 100000
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

#[path = "common/send.rs"]
mod send;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, topic, count] = args.as_slice() else {
        bail!("usage: produce_events BROKERS TOPIC COUNT");
    };
    let count: u64 = count.parse().context("COUNT must be a number")?;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "10")
        .set("compression.type", "lz4")
        .create()?;
    let start = Instant::now();
    for i in 0..count {
        let payload = tributary::ops::demo::sample_event(i);
        let key = format!("user-{}", i % 997);
        let record = BaseRecord::to(topic).key(&key).payload(&payload);
        send::send_waiting(&producer, record)?;
    }
    producer.flush(Duration::from_secs(60))?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "produced {count} events to {topic} in {secs:.1}s ({:.0}/s)",
        count as f64 / secs
    );
    Ok(())
}
