//! What a writer keeps of one table's log between its commits.

use crate::offsets::store::OffsetStore;
use crate::sink::checkpoint::Checkpoints;
use crate::sink::dv::index::KeyIndex;
use crate::sink::upsert::deletes::DeleteMemory;

/// What a writer keeps of one table's log between its commits: the offsets
/// stored in it, the checkpoint schedule, (upsert tables with `order_by`)
/// the memory of deletes and (merge-on-read tables) the key index. Clones
/// share them all (the pipeline's handle and its commit task's).
#[derive(Debug, Clone, Default)]
pub struct TableLog {
    /// The offsets stored in the table.
    pub offsets: OffsetStore,
    /// When the next checkpoint is due.
    pub checkpoints: Checkpoints,
    /// Upsert tables with `order_by`: the order values of deleted keys.
    pub deletes: DeleteMemory,
    /// Merge-on-read upsert tables: where each key's live row is.
    pub keys: std::sync::Arc<KeyIndex>,
}
