//! Integration tests against real servers started by `tests/run.sh`: Apache Kafka
//! (the default broker), moto for S3, Tansu where a test starts and kills brokers
//! of its own. Every test uses its own topic, bucket, table and app id, so they
//! run in parallel.

mod broker;
mod cdc;
mod commit;
mod faults;
mod formats;
mod harness;
mod ingest;
mod liveness;
mod long_log;
mod maintenance;
mod merge_on_read;
mod merge_on_read_pipeline;
mod observability;
mod process;
mod readers;
mod registry;
mod replicas;
mod restore;
mod scale;
mod security;
mod upsert;
mod upsert_late;
mod validate;
