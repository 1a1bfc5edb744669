//! Checkpoints after the daemon's own commits, never fatal.
//!
//! delta-rs writes a checkpoint inside the commit call (every
//! `delta.checkpointInterval` versions) and lists the whole `_delta_log` after every
//! commit for expired-log cleanup. Both are switched off there: a checkpoint that
//! fails after the commit landed made the commit look failed (the retry then found
//! it `AlreadyCommitted`, so it was not counted, and that checkpoint was never
//! written), and a failure that is not transient stopped the daemon. Here the
//! checkpoint runs after a landed commit; a failure is logged and the checkpoint is
//! tried again after the next commit. Expired log files are cleaned up only after a
//! checkpoint was written, and that cleanup reads only the expired part of the log
//! ([`super::cleanup`]), not all of it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use deltalake::table::config::TablePropertiesExt as _;
use deltalake::{DeltaTable, DeltaTableError};

/// The checkpoint schedule of one table; clones share it.
#[derive(Debug, Clone, Default)]
pub struct Checkpoints {
    /// A checkpoint was due and failed: write one after the next commit.
    pending: Arc<AtomicBool>,
}

/// What [`Checkpoints::after_commit`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointOutcome {
    /// None was due.
    NotDue,
    /// A checkpoint of this version was written.
    Written {
        /// Expired log files removed after it.
        logs_removed: usize,
    },
    /// One was due and failed; it is retried after the next commit.
    Failed,
}

/// Whether a checkpoint is due at `version`: the table's interval is reached (the
/// rule Delta writers share: `(version + 1) % interval == 0`), or an earlier one failed.
pub fn due(version: u64, interval: u64, pending: bool) -> bool {
    pending || (version + 1).is_multiple_of(interval.max(1))
}

impl Checkpoints {
    /// After a commit of ours landed and `table` is loaded at it: write the
    /// checkpoint if one is due. Errors are logged, never returned.
    pub async fn after_commit(&self, table: &DeltaTable) -> CheckpointOutcome {
        let Some(state) = table.state.as_ref() else {
            return CheckpointOutcome::NotDue;
        };
        let version = state.version();
        let config = state.table_config();
        let interval = config.checkpoint_interval().get();
        if !due(version, interval, self.pending.load(Ordering::Acquire)) {
            return CheckpointOutcome::NotDue;
        }
        let cleanup = config.enable_expired_log_cleanup();
        match write(table, cleanup).await {
            Ok(logs_removed) => {
                self.pending.store(false, Ordering::Release);
                tracing::info!(table = %table.table_url(), version, logs_removed, "checkpoint written");
                CheckpointOutcome::Written { logs_removed }
            }
            Err(e) => {
                self.pending.store(true, Ordering::Release);
                tracing::warn!(table = %table.table_url(), version, error = %e, "checkpoint failed; it is retried after the next commit");
                CheckpointOutcome::Failed
            }
        }
    }
}

async fn write(table: &DeltaTable, cleanup: bool) -> Result<usize, DeltaTableError> {
    deltalake::checkpoints::create_checkpoint(table, None).await?;
    if !cleanup {
        return Ok(0);
    }
    // A cleanup that fails leaves files for the next checkpoint to remove.
    match super::cleanup::expired(table).await {
        Ok(n) => Ok(n),
        Err(e) => {
            tracing::warn!(table = %table.table_url(), error = %e, "expired log cleanup failed; retried after the next checkpoint");
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_at_the_interval_and_after_a_failure_until_one_is_written() {
        let at = |v| due(v, 10, false);
        assert!(!at(0) && !at(8) && at(9) && !at(10) && at(19));
        // A failed checkpoint at 9 makes 10 (and every version until one is
        // written) due, not only 19.
        assert!(due(10, 10, true) && due(13, 10, true));
        assert!(
            due(0, 1, false) && due(5, 0, false),
            "interval 1 (or a bad 0) checkpoints every commit"
        );
    }
}
