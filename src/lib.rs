//! tributary: Kafka topics into Delta Lake tables, exactly once.
//!
//! # Data flow
//!
//! ```text
//! source ──▶ decode ──▶ window ──▶ sink ──▶ offsets
//! (Kafka     (JSON or    (the open   (Delta table:  (the txn actions
//!  consumer,  registry    window:     files + txns   a table stores,
//!  rebalances formats →   admission,  in one commit, read once, then
//!  epochs)    Arrow,      flush       compare-and-   kept current)
//!             rejects)    policy,     swap, dead
//!                         encoder)    letters)
//!                     ▲
//!          pipeline: orchestration (select loop, rebalances, recovery, shutdown)
//!          ops: operator commands beside it; cli: the command line on top
//! ```
//!
//! Lowest layer first (a module uses only the layers below it; `tests/architecture.rs`
//! checks it):
//!
//! - [`record`]: `TopicPartition` and [`record::RecordChunk`], records of one poll
//!   burst in one contiguous buffer. [`secret`]: redacted values. [`fault`]: our
//!   typed errors inside delta-rs' error type, known by type.
//! - [`telemetry`]: counters, named events (count and log in one place), the
//!   metrics endpoint, logging. [`schema`]: the table schema and its evolution.
//!   [`offsets`]: the stored offsets of a table's txn actions.
//! - [`source`]: the rdkafka consumer on its own thread; rebalance callbacks wait
//!   for the pipeline's answer; back-pressure without leaving the group.
//!   [`decode`]: records straight into Arrow, bad ones isolated with a reason;
//!   an upsert table's records as keyed changes, reduced to one per key.
//! - [`sink`]: one table: open or create it; the commit engine, whose body is
//!   appended files or a MERGE of keyed changes, under a compare-and-swap on the
//!   offsets; dead letters, checkpoints, which storage errors are transient.
//! - [`window`]: the open window, which records it admits, when it is due, its
//!   Parquet encoder and its flush.
//! - [`config`]: the TOML file, validated into a typed [`config::Config`].
//! - [`pipeline`]: the daemon's orchestration: routing, rebalances, the ledger of
//!   offsets per partition, recovery, shutdown. [`ops`]: compact, vacuum,
//!   checkpoint, offsets, status, verify, validate, demo.
//! - [`cli`]: the command line.
//!
//! # Exactly once
//!
//! The Delta log is the only source of truth for progress. Data files and the
//! offsets they account for become visible in one atomic commit, and every commit is
//! a compare-and-swap on the offsets it advances (see [`sink::commit`]). On start and on
//! every assignment, each partition is read from the offset after the one stored in
//! the table. Consumer-group offsets are committed to Kafka after each Delta commit
//! for lag tooling only; they are never read back.
//!
//! ARCHITECTURE.md states the failure and rebalance semantics in full.

pub mod cli;
pub mod config;
pub mod decode;
pub mod fault;
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
