//! The broker and the bucket: topics, the pre-fill, and the paced producer.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::events;
use crate::send;

pub async fn create_topics(
    brokers: &str,
    topics: &[String],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    // A few at a time: one request for hundreds of topics is slow on small brokers.
    for chunk in topics.chunks(50) {
        let new: Vec<NewTopic> = chunk
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        for r in admin.create_topics(&new, &AdminOptions::new()).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
        }
    }
    Ok(())
}

pub async fn create_bucket(endpoint: &str, bucket: &str) -> anyhow::Result<()> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .load()
        .await;
    let client = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    client.create_bucket().bucket(bucket).send().await?;
    Ok(())
}

/// Where records go: every partition of every topic, in turn.
#[derive(Debug, Clone)]
pub struct Targets {
    pub topics: Vec<String>,
    pub partitions: i32,
}

impl Targets {
    fn at(&self, i: u64) -> (&str, i32) {
        let n = self.topics.len() as u64;
        let topic = &self.topics[(i % n) as usize];
        (topic, ((i / n) % self.partitions as u64) as i32)
    }
}

/// The bench's producer: large lz4 batches, as a bulk loader would send them.
pub fn producer(brokers: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("compression.type", "lz4")
        .create()?)
}

/// The producer and the encoder of event payloads.
pub struct Producing {
    producer: ThreadedProducer<DefaultProducerContext>,
    avro: Option<(apache_avro::Schema, u32)>,
    json: String,
    framed: Vec<u8>,
    pub bytes: u64,
}

impl Producing {
    pub fn new(brokers: &str, avro_id: Option<u32>) -> anyhow::Result<Self> {
        let avro = match avro_id {
            Some(id) => Some((apache_avro::Schema::parse_str(events::BENCH_AVRO)?, id)),
            None => None,
        };
        Ok(Self {
            producer: producer(brokers)?,
            avro,
            json: String::with_capacity(320),
            framed: Vec::with_capacity(320),
            bytes: 0,
        })
    }

    fn send(&mut self, targets: &Targets, i: u64) -> anyhow::Result<()> {
        let payload: &[u8] = match &self.avro {
            None => {
                events::json(i, &mut self.json);
                self.json.as_bytes()
            }
            Some((schema, id)) => {
                events::avro(schema, *id, i, &mut self.framed);
                &self.framed
            }
        };
        self.bytes += payload.len() as u64;
        let (topic, partition) = targets.at(i);
        let record = BaseRecord::<(), [u8]>::to(topic)
            .partition(partition)
            .payload(payload);
        send::send_waiting(&self.producer, record)?;
        Ok(())
    }

    /// Produce events `0..n` over the targets and wait for their delivery.
    pub fn prefill(&mut self, targets: &Targets, n: u64) -> anyhow::Result<()> {
        for i in 0..n {
            self.send(targets, i)?;
        }
        self.producer.flush(Duration::from_secs(300))?;
        Ok(())
    }

    /// Produce `rate` events per second over the targets for `secs` seconds, in
    /// ticks of 100 ms; returns how many were produced.
    pub fn paced(&mut self, targets: &Targets, rate: u64, secs: u64) -> anyhow::Result<u64> {
        let start = Instant::now();
        let mut sent = 0u64;
        let tick = Duration::from_millis(100);
        let ticks = secs * 10;
        for k in 1..=ticks {
            let due = rate * k / 10;
            while sent < due {
                self.send(targets, sent)?;
                sent += 1;
            }
            self.producer.poll(Duration::ZERO);
            let next = start + tick * k as u32;
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        self.producer.flush(Duration::from_secs(300))?;
        Ok(sent)
    }
}
