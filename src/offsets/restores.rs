//! Restores made by another engine, and the hole they leave.
//!
//! A RESTORE commit (Spark's `RESTORE TABLE`, delta-rs' `restore`) brings back an
//! earlier version's files but not its offsets: log replay keeps the newest
//! `txn` per app id. After one, the stored offsets are ahead of the rows the
//! table holds, and a daemon that carried on would never write the records in
//! between. `tributary restore` moves the offsets back in the same commit (and
//! says so in its `commitInfo`); any other RESTORE is *foreign*.
//!
//! The offset store notes the newest foreign RESTORE it reads (in each new
//! commit, and at a full replay by walking back from the newest version to the
//! last commit tributary made), until an operator command of tributary
//! (`restore`, `offsets set`) follows it. Whether it left a hole is then a
//! comparison: the app's offsets now against those stored at the restored
//! version. Equal (a restore that undid another writer's change after the last
//! commit of ours) is no hole.

use std::fmt;

use serde::Deserialize;

use crate::record::TopicPartition;

/// At a full replay, commits read back from the newest looking for a foreign
/// RESTORE, stopping at the first commit tributary made.
pub const WALK_BACK: u64 = 100;

/// A RESTORE commit tributary did not make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForeignRestore {
    /// The RESTORE commit.
    pub version: u64,
    /// The version it restored, when the commit says (a restore to a
    /// timestamp may not).
    pub restored_to: Option<u64>,
}

/// What a commit says about restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// A RESTORE made by another engine.
    ForeignRestore {
        /// The version restored, if named.
        restored_to: Option<u64>,
    },
    /// A commit of tributary's: an operator command (`restore`, `offsets set`),
    /// which settles the offsets, or the daemon's.
    Tributary {
        /// Made by an operator command.
        operator: bool,
    },
    /// Anything else.
    Other,
}

/// The `commitInfo` fields that tell restores apart.
#[derive(Debug, Default, Deserialize)]
pub struct CommitInfo {
    operation: Option<String>,
    #[serde(rename = "operationParameters")]
    parameters: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(rename = "tributary.operation")]
    tributary_operation: Option<String>,
    #[serde(rename = "tributary.appId")]
    tributary_app: Option<String>,
}

impl CommitInfo {
    /// What this commit is, for restores.
    pub fn mark(&self) -> Mark {
        if let Some(op) = &self.tributary_operation {
            return Mark::Tributary {
                operator: !op.is_empty(),
            };
        }
        if self.tributary_app.is_some() {
            return Mark::Tributary { operator: false };
        }
        if self.operation.as_deref() != Some("RESTORE") {
            return Mark::Other;
        }
        // Spark writes the version as a string, delta-rs as a number.
        let restored_to = self
            .parameters
            .as_ref()
            .and_then(|p| p.get("version"))
            .and_then(|v| match v {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            });
        Mark::ForeignRestore { restored_to }
    }
}

/// The hole a foreign restore left: partitions whose stored offset is not the
/// one stored at the restored version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hole {
    /// The table.
    pub uri: String,
    /// The restore.
    pub restore: ForeignRestore,
    /// Partitions, with the offset stored now and at the restored version.
    pub partitions: Vec<(TopicPartition, i64, Option<i64>)>,
}

impl std::error::Error for Hole {}

impl fmt::Display for Hole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = self
            .restore
            .restored_to
            .map_or("an earlier version".to_owned(), |v| format!("version {v}"));
        write!(
            f,
            "table {} was restored to {to} by another engine (RESTORE commit, version {}): \
             the offsets stored for {} partition(s) are ahead of the rows the table holds",
            self.uri,
            self.restore.version,
            self.partitions.len()
        )?;
        if let Some((tp, now, then)) = self.partitions.first() {
            let then = then.map_or("none".to_owned(), |t| t.to_string());
            write!(
                f,
                " (e.g. {tp}: stored {now}, {then} at the restored version)"
            )?;
        }
        let fix = match self.restore.restored_to {
            Some(v) => format!("`tributary restore --config FILE --to-version {v}`"),
            None => "`tributary restore --config FILE --to-version N`".to_owned(),
        };
        write!(
            f,
            ". Ingesting on would never write the records in between. Run {fix} to replay \
             them (it sets the offsets stored at that version), or `tributary offsets set` to \
             choose where to resume"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(json: &str) -> Mark {
        serde_json::from_str::<CommitInfo>(json).unwrap().mark()
    }

    #[test]
    fn restores_are_told_apart_by_who_made_them() {
        assert_eq!(
            info(r#"{"operation":"RESTORE","operationParameters":{"version":3}}"#),
            Mark::ForeignRestore {
                restored_to: Some(3)
            }
        );
        // Spark's parameters are strings; a restore to a time may name no version.
        assert_eq!(
            info(
                r#"{"operation":"RESTORE","operationParameters":{"version":"12","timestamp":null}}"#
            ),
            Mark::ForeignRestore {
                restored_to: Some(12)
            }
        );
        assert_eq!(
            info(r#"{"operation":"RESTORE","operationParameters":{"datetime":1700000000000}}"#),
            Mark::ForeignRestore { restored_to: None }
        );
        assert_eq!(
            info(
                r#"{"operation":"RESTORE","operationParameters":{"version":3},"tributary.operation":"restore","tributary.appId":"a"}"#
            ),
            Mark::Tributary { operator: true }
        );
        assert_eq!(
            info(r#"{"operation":"WRITE","tributary.operation":"offsets-set"}"#),
            Mark::Tributary { operator: true }
        );
        assert_eq!(
            info(r#"{"operation":"WRITE","tributary.appId":"a"}"#),
            Mark::Tributary { operator: false }
        );
        assert_eq!(info(r#"{"operation":"OPTIMIZE"}"#), Mark::Other);
        assert_eq!(info(r#"{}"#), Mark::Other);
    }

    #[test]
    fn the_message_names_the_restore_and_the_fix() {
        let hole = Hole {
            uri: "s3://b/t".into(),
            restore: ForeignRestore {
                version: 9,
                restored_to: Some(2),
            },
            partitions: vec![(TopicPartition::new("orders", 0), 99, Some(29))],
        };
        let text = hole.to_string();
        for needle in [
            "restored to version 2",
            "version 9",
            "orders/0: stored 99, 29",
            "tributary restore --config FILE --to-version 2",
            "tributary offsets set",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
    }
}
