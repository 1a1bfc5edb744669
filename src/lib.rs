//! tributary: Kafka topics into Delta Lake tables, exactly once.
//!
//! # Data flow
//!
//! ```text
//! source ──▶ record ──▶ decode ──▶ pipeline (window) ──▶ commit ──▶ table
//! (Kafka poll   (chunks of    (JSON → Arrow,   (flush policy,     (files + txn   (Delta on S3
//!  thread,       raw records)  rejects with     rebalances,        offsets in     or local disk)
//!  rebalances)                 reasons)         rewinds)           one commit)
//! ```
//!
//! - [`config`]: the TOML file, validated into a typed [`config::Config`].
//! - [`source`]: the rdkafka consumer on its own thread; rebalance callbacks wait for
//!   the pipeline's answer; back-pressure by pausing partitions.
//! - [`record`]: [`record::RecordChunk`], records in one contiguous buffer.
//! - [`decode`]: JSON straight into Arrow, bad records isolated with a reason.
//! - [`schema`]: the table schema (record fields + Kafka metadata columns).
//! - [`pipeline`]: the event loop: windows, flushes, commit-on-revoke, rewinds.
//! - [`commit`]: one Delta transaction per window: add actions plus a `txn` action
//!   per partition (`<app_id>/<topic>/<partition>` = last offset accounted for).
//! - [`table`]: open or create the table, read stored offsets, Parquet writers.
//! - [`offset_store`]: the offsets stored in a table's txn actions, read in one
//!   pass and then kept current commit by commit.
//! - [`checkpoint`]: checkpoints after the daemon's own commits, never fatal.
//! - [`preflight`]: the `validate` command's checks.
//! - [`demo`]: the self-contained demo on an in-process Kafka mock cluster.
//!
//! # Exactly once
//!
//! The Delta log is the only source of truth for progress. Data files and the
//! offsets they account for become visible in one atomic commit, and every commit is
//! a compare-and-swap on the offsets it advances (see [`commit`]). On start and on
//! every assignment, each partition is read from the offset after the one stored in
//! the table. Consumer-group offsets are committed to Kafka after each Delta commit
//! for lag tooling only; they are never read back.
//!
//! ARCHITECTURE.md states the failure and rebalance semantics in full.

pub mod cli;
pub mod config;
pub mod decode;
pub mod offsets;
pub mod ops;
pub mod pipeline;
pub mod record;
pub mod schema;
pub mod secret;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod window;
