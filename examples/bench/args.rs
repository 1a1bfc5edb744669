//! The bench's command line: the shape of the run (scenario) and its settings.

use std::path::PathBuf;

use anyhow::{Context, bail};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Format {
    Json,
    Avro,
}

#[derive(Debug)]
pub struct Args {
    pub brokers: String,
    pub s3: String,
    pub moto_log: Option<PathBuf>,
    /// Records to pre-fill (catch-up runs); ignored with `--rate`.
    pub records: u64,
    /// Partitions per topic.
    pub partitions: i32,
    /// Topics, each its own table through a `{topic}` route when more than one.
    pub tables: u32,
    /// Daemons in one consumer group.
    pub replicas: u32,
    /// Produce this many records per second (all partitions together) while the
    /// daemons run, instead of pre-filling.
    pub rate: Option<u64>,
    /// How long to produce at `rate`, seconds.
    pub duration: u64,
    /// Versions to grow the table's log by before the daemons start.
    pub long_log: u64,
    pub format: Format,
    pub compression: String,
    pub extra_config: String,
    pub kafka_keys: String,
    pub broker_pid: Option<u32>,
    /// What the broker is (Apache Kafka, Tansu), for the report.
    pub broker_name: String,
    pub s3_pid: Option<u32>,
    /// The daemon to run (default: the `tributary` built beside this example), for
    /// comparing two builds on the same servers.
    pub daemon: Option<PathBuf>,
    /// The upsert scenario: a table of this many keys loaded first, then
    /// `records` changes applied in upsert mode.
    pub upsert: Option<u64>,
    /// Upsert: the table partitioned by the Kafka partition (an ownership column).
    pub owned: bool,
    /// Upsert: the table written merge-on-read (deletion vectors).
    pub merge_on_read: bool,
}

const USAGE: &str = "usage: bench --brokers HOST:PORT --s3 URL [--moto-log FILE] \
    [--records N] [--partitions P] [--tables T] [--replicas R] [--rate REC_PER_S --duration S] \
    [--long-log VERSIONS] [--format json|avro] [--compression C] [--config EXTRA.toml] \
    [--kafka 'KEY = VALUE'] [--broker-pid PID] [--broker-name NAME] [--s3-pid PID] [--daemon PATH] \
    [--upsert KEYS [--owned] [--merge-on-read]]";

pub fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        brokers: String::new(),
        s3: String::new(),
        moto_log: None,
        records: 5_000_000,
        partitions: 8,
        tables: 1,
        replicas: 1,
        rate: None,
        duration: 180,
        long_log: 0,
        format: Format::Json,
        compression: "zstd(1)".into(),
        extra_config: String::new(),
        kafka_keys: String::new(),
        broker_pid: None,
        broker_name: "a Kafka broker".into(),
        s3_pid: None,
        daemon: None,
        upsert: None,
        owned: false,
        merge_on_read: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--brokers" => a.brokers = value()?,
            "--s3" => a.s3 = value()?,
            "--moto-log" => a.moto_log = Some(value()?.into()),
            "--records" => a.records = value()?.parse().context("--records")?,
            "--partitions" => a.partitions = value()?.parse().context("--partitions")?,
            "--tables" => a.tables = value()?.parse().context("--tables")?,
            "--replicas" => a.replicas = value()?.parse().context("--replicas")?,
            "--rate" => a.rate = Some(value()?.parse().context("--rate")?),
            "--duration" => a.duration = value()?.parse().context("--duration")?,
            "--long-log" => a.long_log = value()?.parse().context("--long-log")?,
            "--compression" => a.compression = value()?,
            "--format" => {
                a.format = match value()?.as_str() {
                    "json" => Format::Json,
                    "avro" => Format::Avro,
                    other => bail!("--format {other}: expected json or avro"),
                }
            }
            "--config" => a.extra_config = std::fs::read_to_string(value()?)?,
            // A `[kafka]` key (e.g. max_chunk_records = 16384); repeatable.
            "--kafka" => {
                a.kafka_keys.push_str(&value()?);
                a.kafka_keys.push('\n');
            }
            "--broker-pid" => a.broker_pid = Some(value()?.parse()?),
            "--broker-name" => a.broker_name = value()?,
            "--s3-pid" => a.s3_pid = Some(value()?.parse()?),
            "--daemon" => a.daemon = Some(value()?.into()),
            "--upsert" => a.upsert = Some(value()?.parse().context("--upsert")?),
            "--owned" => a.owned = true,
            "--merge-on-read" => a.merge_on_read = true,
            other => bail!("unknown argument {other}; {USAGE}"),
        }
    }
    if a.brokers.is_empty() || a.s3.is_empty() {
        bail!(
            "--brokers and --s3 are required (benches/e2e.sh starts the servers and passes them)"
        );
    }
    if a.tables == 0 || a.replicas == 0 || a.partitions < 1 {
        bail!("--tables, --replicas and --partitions must be at least 1");
    }
    if a.long_log > 0 && (a.format != Format::Json || a.tables > 1) {
        bail!("--long-log grows one JSON table's log: use it with --format json and one table");
    }
    if a.upsert.is_some()
        && (a.format != Format::Json || a.tables > 1 || a.rate.is_some() || a.long_log > 0)
    {
        bail!(
            "--upsert loads one JSON table and catches up on changes: no --format avro, --tables, --rate or --long-log"
        );
    }
    if (a.owned || a.merge_on_read) && a.upsert.is_none() {
        bail!("--owned and --merge-on-read are for --upsert");
    }
    Ok(a)
}

impl Args {
    /// One line naming the scenario.
    pub fn scenario(&self) -> String {
        let mut parts = Vec::new();
        if let Some(keys) = self.upsert {
            parts.push(format!(
                "upsert of {} changes (80% on 5% of the keys, 5% deletes) over a table of {keys} keys{}, {}",
                self.records,
                if self.owned {
                    ", partitioned by the Kafka partition"
                } else {
                    ""
                },
                if self.merge_on_read {
                    "merge-on-read"
                } else {
                    "copy-on-write"
                }
            ));
        }
        match self.rate {
            Some(r) => parts.push(format!("{r} records/s for {} s", self.duration)),
            None => parts.push(format!("catch-up of {} records", self.records)),
        }
        parts.push(format!(
            "{} partition{}",
            self.partitions as i64 * self.tables as i64,
            if self.partitions as u32 * self.tables > 1 {
                "s"
            } else {
                ""
            }
        ));
        if self.tables > 1 {
            parts.push(format!("{} tables ({{topic}} route)", self.tables));
        }
        if self.replicas > 1 {
            parts.push(format!("{} daemons on one group", self.replicas));
        }
        if self.long_log > 0 {
            parts.push(format!("log grown to {} versions first", self.long_log));
        }
        parts.push(match self.format {
            Format::Json => "JSON".into(),
            Format::Avro => "Confluent Avro".into(),
        });
        parts.join(", ")
    }
}
