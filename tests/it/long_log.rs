//! A Delta log of many versions, grown in seconds: the scale tests and the bench's
//! long-log scenario start from one.
//!
//! A table fresh at version 0 gets `versions` commits that hold only a
//! `commitInfo` (no action: the table's state does not change), written straight
//! to the object store, many at a time, with the conditional put every Delta
//! writer uses. Its version-0 checkpoint, which therefore describes the state at
//! every later version too, is copied to the last version with `_last_checkpoint`
//! pointing at it, as a writer checkpointing on its interval would leave it.
//! Readers then load the table from that checkpoint, and every file of the log is
//! there to be listed.

use deltalake::logstore::object_store::{ObjectStoreExt as _, PutMode, PutOptions};
use deltalake::{DeltaTable, ObjectStore as _, Path};
use futures::StreamExt;

/// Grow `table` (at version 0) by `versions` empty commits and a checkpoint at
/// the last one, and reload it there.
pub async fn grow_log(table: &mut DeltaTable, versions: u64) {
    assert_eq!(table.version(), Some(0), "grow_log starts from a new table");
    deltalake::checkpoints::create_checkpoint(table, None)
        .await
        .expect("checkpoint of version 0");
    let store = table.log_store().object_store(None);
    let log = |name: String| Path::from(format!("_delta_log/{name}"));
    let now = chrono::Utc::now().timestamp_millis();
    let mut puts = futures::stream::iter(1..=versions)
        .map(|v| {
            let store = store.clone();
            async move {
                let body = format!(
                    "{{\"commitInfo\":{{\"timestamp\":{now},\"operation\":\"WRITE\",\
                     \"operationParameters\":{{\"mode\":\"Append\"}},\"isBlindAppend\":true}}}}\n"
                );
                let opts = PutOptions::from(PutMode::Create);
                store
                    .put_opts(&log(format!("{v:020}.json")), body.into(), opts)
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(64);
    while let Some(put) = puts.next().await {
        put.expect("writing a commit file");
    }
    let checkpoint = store
        .get(&log(format!("{:020}.checkpoint.parquet", 0)))
        .await
        .expect("the version-0 checkpoint")
        .bytes()
        .await
        .expect("its bytes");
    store
        .put(
            &log(format!("{versions:020}.checkpoint.parquet")),
            checkpoint.into(),
        )
        .await
        .expect("copying the checkpoint");
    let hint = store
        .get(&log("_last_checkpoint".into()))
        .await
        .expect("_last_checkpoint")
        .bytes()
        .await
        .expect("its bytes");
    let mut hint: serde_json::Value = serde_json::from_slice(&hint).expect("hint JSON");
    hint["version"] = versions.into();
    if let Some(o) = hint.as_object_mut() {
        o.remove("checksum");
    }
    store
        .put(&log("_last_checkpoint".into()), hint.to_string().into())
        .await
        .expect("writing _last_checkpoint");
    table
        .update_state()
        .await
        .expect("reloading the grown table");
    assert_eq!(table.version(), Some(versions));
}
