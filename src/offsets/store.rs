//! The Kafka offsets stored in a table's `txn` actions, read in one pass and then
//! kept current commit by commit.
//!
//! delta-rs answers one app id per call, each with a replay of the log (the
//! checkpoint and every commit since). With hundreds of partitions that is hundreds
//! of replays for every assign, rewind and pre-commit check, each longer as the log
//! grows: commit time grew with every version. An [`OffsetStore`] replays the log
//! once for every app id (through the Delta kernel), and afterwards reads only the
//! commit files that landed since the version it holds: one GET per new version,
//! whatever the number of partitions or the length of the log. It falls back to a
//! full replay when it is far behind or a commit file it needs was cleaned up.
//!
//! Clones share one state, so the pipeline's handle and its commit task's see the
//! same offsets. The state only moves forward: a table handle older than the store
//! gets the store's newer answer, which is what a compare-and-swap needs (a newer
//! answer can only make it report `Stale` sooner, never write over newer offsets).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use buoyant_kernel::engine_data::{GetData, RowVisitor, TypedGetData as _};
use buoyant_kernel::expressions::ColumnName;
use buoyant_kernel::schema::{ColumnNamesAndTypes, DataType};
use deltalake::{DeltaTable, DeltaTableError};
use serde::Deserialize;

use crate::offsets::restores::{CommitInfo, ForeignRestore, Hole, Mark, WALK_BACK};
use crate::record::TopicPartition;

/// The txn app id under which a partition's offset is stored:
/// `<app_id>/<topic>/<partition>`.
///
/// Kafka topic names cannot contain `/` and the partition is a number, so reading
/// from the right gives back exactly one (app id, topic, partition): two apps can
/// never share an id. The earlier encoding, [`legacy_txn_app_id`], joined the
/// parts with `-`, which also occurs in app ids and topics (app `orders` with topic
/// `eu-x`, and app `orders-eu` with topic `x`, both gave `orders-eu-x-0`).
pub fn txn_app_id(app_id: &str, tp: &TopicPartition) -> String {
    format!("{app_id}/{}/{}", tp.topic, tp.partition)
}

/// The app id tributary wrote before [`txn_app_id`]: `<app_id>-<topic>-<partition>`.
/// Read (never written) so that tables written then keep their progress: it
/// counts for a partition until the first commit under the new id.
pub fn legacy_txn_app_id(app_id: &str, tp: &TopicPartition) -> String {
    format!("{app_id}-{}-{}", tp.topic, tp.partition)
}

/// `<topic>/<partition>` back to the partition (topics cannot contain `/`).
fn partition_of(rest: &str) -> Option<TopicPartition> {
    let (topic, p) = rest.rsplit_once('/')?;
    (!topic.is_empty() && !topic.contains('/'))
        .then_some(())
        .and_then(|()| Some(TopicPartition::new(topic, p.parse().ok()?)))
}

/// Beyond this many new versions a full replay (checkpoint + commits since) reads
/// less than one GET per version would.
const MAX_INCREMENTAL_VERSIONS: u64 = 256;

/// A stored `txn` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Txn {
    version: i64,
    last_updated: Option<i64>,
}

#[derive(Debug, Default)]
struct State {
    /// The table version the map is current at; `None` before the first read.
    version: Option<u64>,
    txns: HashMap<String, Txn>,
    /// The newest RESTORE made by another engine, until an operator command of
    /// tributary follows it or it is found to have left no hole.
    foreign: Option<ForeignRestore>,
}

/// How much log the store has read (for tests and metrics).
#[derive(Debug, Default)]
pub struct StoreReads {
    /// Full replays of the log (checkpoint and commits).
    pub full_replays: AtomicU64,
    /// Single commit files read.
    pub commits_read: AtomicU64,
}

/// The offsets stored in one table; cheap to clone, clones share the state.
#[derive(Debug, Clone, Default)]
pub struct OffsetStore {
    state: Arc<tokio::sync::Mutex<State>>,
    reads: Arc<StoreReads>,
}

impl OffsetStore {
    /// An empty store; the first read replays the log.
    pub fn new() -> Self {
        Self::default()
    }

    /// How much log this store has read so far.
    pub fn reads(&self) -> (u64, u64) {
        (
            self.reads.full_replays.load(Ordering::Relaxed),
            self.reads.commits_read.load(Ordering::Relaxed),
        )
    }

    /// The offsets stored for `tps` as of `table`'s loaded version (or newer).
    pub async fn offsets(
        &self,
        table: &DeltaTable,
        app_id: &str,
        tps: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, Option<i64>>, DeltaTableError> {
        let expires_before = expiration_ms(table)?;
        let mut state = self.state.lock().await;
        self.sync(&mut state, table).await?;
        Ok(tps
            .iter()
            .map(|tp| {
                let v = state
                    .txns
                    .get(&txn_app_id(app_id, tp))
                    .or_else(|| state.txns.get(&legacy_txn_app_id(app_id, tp)))
                    .and_then(|t| live_version(t, expires_before));
                (tp.clone(), v)
            })
            .collect())
    }

    /// Every partition with an offset stored under `app_id` (in the current app id
    /// encoding) as of `table`'s loaded version, sorted.
    pub async fn partitions(
        &self,
        table: &DeltaTable,
        app_id: &str,
    ) -> Result<Vec<TopicPartition>, DeltaTableError> {
        let mut state = self.state.lock().await;
        self.sync(&mut state, table).await?;
        let prefix = format!("{app_id}/");
        let mut tps: Vec<TopicPartition> = state
            .txns
            .keys()
            .filter_map(|k| partition_of(k.strip_prefix(&prefix)?))
            .collect();
        tps.sort();
        Ok(tps)
    }

    /// Record the txns of a commit of ours that landed as `version`, so the next
    /// read need not fetch it. Ignored unless the store is at `version - 1`.
    pub async fn record_commit(&self, version: u64, txns: impl IntoIterator<Item = (String, i64)>) {
        let mut state = self.state.lock().await;
        if version > 0 && state.version == Some(version - 1) {
            // What the commit wrote: `Transaction::new` records no lastUpdated.
            for (app, v) in txns {
                state.txns.insert(
                    app,
                    Txn {
                        version: v,
                        last_updated: None,
                    },
                );
            }
            state.version = Some(version);
        }
    }

    async fn sync(&self, state: &mut State, table: &DeltaTable) -> Result<(), DeltaTableError> {
        let Some(target) = table.version() else {
            return Ok(());
        };
        let from = match state.version {
            Some(have) if have >= target => return Ok(()),
            Some(have) if target - have <= MAX_INCREMENTAL_VERSIONS => have + 1,
            _ => return self.replay(state, table, target).await,
        };
        let store = table.log_store();
        let mut read = HashMap::new();
        let mut foreign = state.foreign;
        for v in from..=target {
            self.reads.commits_read.fetch_add(1, Ordering::Relaxed);
            let Some(bytes) = store.read_commit_entry(v).await? else {
                // Cleaned up (or never there): the checkpoint has what it held.
                return self.replay(state, table, target).await;
            };
            let (txns, mark) = read_commit(&bytes).map_err(unreadable(table, v))?;
            read.extend(txns);
            foreign = after(foreign, v, mark);
        }
        state.txns.extend(read);
        state.foreign = foreign;
        state.version = Some(target);
        Ok(())
    }

    async fn replay(
        &self,
        state: &mut State,
        table: &DeltaTable,
        version: u64,
    ) -> Result<(), DeltaTableError> {
        self.reads.full_replays.fetch_add(1, Ordering::Relaxed);
        state.txns = replay_all(table, version).await?;
        state.foreign = walk_back(table, version).await?;
        state.version = Some(version);
        Ok(())
    }

    /// The hole a RESTORE made by another engine left in `app_id`'s offsets, as
    /// of `table`'s loaded version: `None` when there was none, or the offsets
    /// stored now are those of the restored version.
    pub async fn hole(
        &self,
        table: &DeltaTable,
        app_id: &str,
    ) -> Result<Option<Hole>, DeltaTableError> {
        let mut state = self.state.lock().await;
        self.sync(&mut state, table).await?;
        let Some(restore) = state.foreign else {
            return Ok(None);
        };
        let then = match restore.restored_to {
            Some(v) => replay_all(table, v).await?,
            None => HashMap::new(),
        };
        let prefix = format!("{app_id}/");
        let mut partitions: Vec<(TopicPartition, i64, Option<i64>)> = state
            .txns
            .iter()
            .filter_map(|(id, now)| {
                let tp = partition_of(id.strip_prefix(&prefix)?)?;
                let before = then.get(id).map(|t| t.version);
                (before != Some(now.version)).then_some((tp, now.version, before))
            })
            .collect();
        if partitions.is_empty() {
            state.foreign = None;
            return Ok(None);
        }
        partitions.sort();
        Ok(Some(Hole {
            uri: table.table_url().to_string(),
            restore,
            partitions,
        }))
    }

    /// [`OffsetStore::offsets`] for a writer: an error that will not go away by
    /// retrying (it names the restore and what to run) when another engine's
    /// RESTORE left the offsets ahead of the rows.
    pub async fn offsets_for_writing(
        &self,
        table: &DeltaTable,
        app_id: &str,
        tps: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, Option<i64>>, DeltaTableError> {
        let offsets = self.offsets(table, app_id, tps).await?;
        if let Some(hole) = self.hole(table, app_id).await? {
            tracing::error!(table = %hole.uri, restore_version = hole.restore.version, "{hole}");
            return Err(crate::fault::permanent(hole));
        }
        Ok(offsets)
    }
}

fn unreadable(table: &DeltaTable, v: u64) -> impl Fn(serde_json::Error) -> DeltaTableError + '_ {
    move |e| {
        tracing::error!(table = %table.table_url(), version = v, error = %e, "a commit's actions are not valid JSON");
        DeltaTableError::InvalidJsonLog {
            json_err: e,
            line: format!("an action of commit {v} of {}", table.table_url()),
            version: v,
        }
    }
}

/// The newest foreign restore once commit `v`, marked `mark`, is read.
fn after(foreign: Option<ForeignRestore>, v: u64, mark: Mark) -> Option<ForeignRestore> {
    match mark {
        Mark::ForeignRestore { restored_to } => Some(ForeignRestore {
            version: v,
            restored_to,
        }),
        Mark::Tributary { operator: true } => None,
        Mark::Tributary { operator: false } | Mark::Other => foreign,
    }
}

/// From `version` back to the last commit tributary made (at most
/// [`WALK_BACK`] commits): the foreign restore in between, if any.
async fn walk_back(
    table: &DeltaTable,
    version: u64,
) -> Result<Option<ForeignRestore>, DeltaTableError> {
    let store = table.log_store();
    for v in (version.saturating_sub(WALK_BACK - 1)..=version).rev() {
        let Some(bytes) = store.read_commit_entry(v).await? else {
            return Ok(None); // cleaned up: older than any restore worth finding
        };
        match read_commit(&bytes).map_err(unreadable(table, v))?.1 {
            Mark::ForeignRestore { restored_to } => {
                return Ok(Some(ForeignRestore {
                    version: v,
                    restored_to,
                }));
            }
            Mark::Tributary { .. } => return Ok(None),
            Mark::Other => {}
        }
    }
    Ok(None)
}

/// The `txn` actions of one commit file (newline-delimited JSON actions), last
/// wins, and what its `commitInfo` says about restores.
fn read_commit(bytes: &[u8]) -> Result<(HashMap<String, Txn>, Mark), serde_json::Error> {
    #[derive(Deserialize)]
    struct Line {
        txn: Option<TxnAction>,
        #[serde(rename = "commitInfo")]
        commit_info: Option<CommitInfo>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct TxnAction {
        app_id: String,
        version: i64,
        last_updated: Option<i64>,
    }
    let mut out = HashMap::new();
    let mut mark = Mark::Other;
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line = serde_json::from_slice::<Line>(line)?;
        if let Some(info) = line.commit_info {
            mark = info.mark();
        }
        if let Some(t) = line.txn {
            out.insert(
                t.app_id,
                Txn {
                    version: t.version,
                    last_updated: t.last_updated,
                },
            );
        }
    }
    Ok((out, mark))
}

/// Every app id's newest `txn` at `version`, in one replay of the log segment
/// (checkpoint and commits since) by the Delta kernel delta-rs is built on. The
/// kernel has this scan (`SetTransactionScanner::get_all`) but exposes only the
/// one-id lookup; its `internal-api` feature gives the log segment, which we read
/// with the kernel's own txn schema and a visitor of ours.
async fn replay_all(
    table: &DeltaTable,
    version: u64,
) -> Result<HashMap<String, Txn>, DeltaTableError> {
    let store = table.log_store();
    let engine = store.engine(None);
    let mut root = store.root_url().clone();
    if !root.path().ends_with('/') {
        root.set_path(&format!("{}/", root.path()));
    }
    let replay = move || -> Result<HashMap<String, Txn>, buoyant_kernel::Error> {
        let snapshot = buoyant_kernel::Snapshot::builder_for(root)
            .at_version(version)
            .build(engine.as_ref())?;
        let schema = buoyant_kernel::actions::LOG_TXN_SCHEMA.clone();
        let mut visitor = TxnVisitor::default();
        // Batches come newest first: the first txn seen for an app id wins.
        for batch in snapshot
            .log_segment()
            .read_actions(engine.as_ref(), schema)?
        {
            visitor.visit_rows_of(batch?.actions.as_ref())?;
        }
        Ok(visitor.txns)
    };
    tokio::task::spawn_blocking(replay)
        .await
        .map_err(|e| DeltaTableError::GenericError { source: e.into() })?
        .map_err(DeltaTableError::from)
}

#[derive(Default)]
struct TxnVisitor {
    txns: HashMap<String, Txn>,
}

impl RowVisitor for TxnVisitor {
    fn selected_column_names_and_types(&self) -> (&'static [ColumnName], &'static [DataType]) {
        static COLUMNS: std::sync::LazyLock<ColumnNamesAndTypes> = std::sync::LazyLock::new(|| {
            let names = ["appId", "version", "lastUpdated"].map(|c| ColumnName::new(["txn", c]));
            (
                names.to_vec(),
                vec![DataType::STRING, DataType::LONG, DataType::LONG],
            )
                .into()
        });
        COLUMNS.as_ref()
    }

    fn visit<'a>(
        &mut self,
        row_count: usize,
        getters: &[&'a dyn GetData<'a>],
    ) -> Result<(), buoyant_kernel::Error> {
        for i in 0..row_count {
            let Some(app_id) = getters[0].get_opt(i, "txn.appId")? else {
                continue;
            };
            let app_id: String = app_id;
            if self.txns.contains_key(&app_id) {
                continue;
            }
            let version: i64 = getters[1].get(i, "txn.version")?;
            let last_updated: Option<i64> = getters[2].get_opt(i, "txn.lastUpdated")?;
            self.txns.insert(
                app_id,
                Txn {
                    version,
                    last_updated,
                },
            );
        }
        Ok(())
    }
}

/// Txns last updated at or before this time are expired, when the table sets
/// `delta.setTransactionRetentionDuration` (the kernel's rule, kept so both agree).
fn expiration_ms(table: &DeltaTable) -> Result<Option<i64>, DeltaTableError> {
    let retention = table
        .snapshot()?
        .table_config()
        .set_transaction_retention_duration;
    Ok(retention.map(|d| now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
}

fn live_version(t: &Txn, expires_before: Option<i64>) -> Option<i64> {
    match (expires_before, t.last_updated) {
        (Some(exp), Some(lu)) if lu <= exp => None,
        _ => Some(t.version),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_ids_partition_is_read_back_from_the_right() {
        let tp = TopicPartition::new("eu-orders.v2", 17);
        let id = txn_app_id("orders/eu", &tp);
        assert_eq!(
            partition_of(id.strip_prefix("orders/eu/").unwrap()),
            Some(tp)
        );
        for bad in ["", "t", "/3", "t/x", "a/b/3", "t/"] {
            assert_eq!(partition_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_commit_files_txns_are_read_and_the_last_one_wins() {
        let commit = br#"{"commitInfo":{"timestamp":1,"operation":"WRITE"}}
{"add":{"path":"a.parquet","size":1,"partitionValues":{},"modificationTime":1,"dataChange":true,"stats":"{\"txn\":1}"}}
{"txn":{"appId":"app-t-0","version":41,"lastUpdated":5}}
{"txn":{"appId":"app-t-1","version":7}}
{"txn":{"appId":"app-t-0","version":42,"lastUpdated":6}}
"#;
        let (txns, mark) = read_commit(commit).expect("parses");
        assert_eq!(mark, Mark::Other);
        assert_eq!(txns.len(), 2);
        assert_eq!(
            txns["app-t-0"],
            Txn {
                version: 42,
                last_updated: Some(6)
            }
        );
        assert_eq!(txns["app-t-1"].version, 7);
        assert!(read_commit(b"{\"txn\":{\"appId\":1}}").is_err());
    }

    #[test]
    fn app_ids_that_collided_under_the_legacy_encoding_are_distinct() {
        let (a, b) = (
            ("orders", TopicPartition::new("eu-x", 0)),
            ("orders-eu", TopicPartition::new("x", 0)),
        );
        assert_eq!(legacy_txn_app_id(a.0, &a.1), legacy_txn_app_id(b.0, &b.1));
        assert_ne!(txn_app_id(a.0, &a.1), txn_app_id(b.0, &b.1));
        assert_eq!(txn_app_id(a.0, &a.1), "orders/eu-x/0");
    }

    #[tokio::test]
    async fn a_legacy_offset_counts_until_the_new_id_is_written() {
        let store = OffsetStore::new();
        let tp = TopicPartition::new("t", 3);
        {
            let mut state = store.state.lock().await;
            state.version = Some(5);
            let txn = |version| Txn {
                version,
                last_updated: None,
            };
            state.txns.insert(legacy_txn_app_id("app", &tp), txn(41));
            state.txns.insert(
                legacy_txn_app_id("app", &TopicPartition::new("t", 4)),
                txn(7),
            );
        }
        let get = |state: &State, tp: &TopicPartition| {
            state
                .txns
                .get(&txn_app_id("app", tp))
                .or_else(|| state.txns.get(&legacy_txn_app_id("app", tp)))
                .map(|t| t.version)
        };
        assert_eq!(get(&*store.state.lock().await, &tp), Some(41));
        store.record_commit(6, [(txn_app_id("app", &tp), 50)]).await;
        let state = store.state.lock().await;
        assert_eq!(get(&state, &tp), Some(50));
        assert_eq!(get(&state, &TopicPartition::new("t", 4)), Some(7));
    }

    #[test]
    fn expired_txns_read_as_absent_and_untimed_ones_never_expire() {
        let t = |lu| Txn {
            version: 9,
            last_updated: lu,
        };
        assert_eq!(live_version(&t(Some(100)), Some(100)), None);
        assert_eq!(live_version(&t(Some(101)), Some(100)), Some(9));
        assert_eq!(live_version(&t(None), Some(100)), Some(9));
        assert_eq!(live_version(&t(Some(1)), None), Some(9));
    }
}
