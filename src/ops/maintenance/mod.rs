//! Table maintenance: compaction, vacuum and checkpoints, safe to run while
//! `ingest` keeps writing.
//!
//! Each operation is planned first and executed second; `--dry-run` prints the plan.
//! The work itself is delta-rs' (`optimize`, `vacuum`, checkpoints); this module adds
//! the guard rails an operator needs.
//!
//! # Guarantees and dangers
//!
//! - **compact** rewrites small files into larger ones and commits the adds and
//!   removes with `dataChange = false`: readers see the same rows, and concurrent
//!   appends from `ingest` do not conflict with it (delta-rs retries the commit on
//!   top of them). The files it replaces stay on storage until `vacuum`.
//! - **vacuum** deletes files that the table no longer references and that were
//!   removed (lite) or written (full) longer ago than the retention period. Readers
//!   of versions older than the retention, and writers whose uploads are older than
//!   it, can lose files: that is why a retention below the table's
//!   `delta.deletedFileRetentionDuration` (7 days by default) is refused unless
//!   forced. Full mode also removes orphans left by crashed writers (uploaded but
//!   never committed), again only those older than the retention.
//! - **checkpoint** writes a Parquet checkpoint of the current version and removes
//!   log files older than `delta.logRetentionDuration` that the checkpoint makes
//!   unnecessary. The daemon already checkpoints every `delta.checkpointInterval`
//!   commits (delta-rs' post-commit hook, in the commit task, off the ingest path).

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::operations::vacuum::{Clock, VacuumMode};
use deltalake::table::config::TablePropertiesExt as _;

pub mod checkpoint;
pub mod compact;
pub mod vacuum;

pub use checkpoint::{CheckpointReport, checkpoint};
pub use compact::{Compact, CompactPlan, CompactReport, PartitionFilter};
pub use vacuum::{VacuumOptions, VacuumReport, table_retention, vacuum};

pub use crate::ops::tables::{
    DEFAULT_TARGET_FILE_SIZE, FileSummary, MaintenanceError, file_summary, open,
    parse_storage_options, target_file_size,
};
