//! Integration tests against real servers (Tansu for Kafka, moto for S3) started by
//! `tests/run.sh`. Every test uses its own topic, bucket, table and app id, so they
//! run in parallel.

mod cdc;
mod commit;
mod faults;
mod formats;
mod harness;
mod ingest;
mod liveness;
mod long_log;
mod maintenance;
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
