//! What writing a commit's body did, shared by every body ([`super::body`],
//! [`super::on_read`]).

/// A landed commit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Landed {
    /// Its version.
    pub(super) version: u64,
    /// Files it added.
    pub(super) files: u64,
    /// Their bytes.
    pub(super) bytes: u64,
    /// delta-rs' own re-bases over non-conflicting commits.
    pub(super) retries: u64,
}

/// What writing the body did.
#[derive(Debug)]
pub(super) enum Wrote {
    /// A commit landed; `table` is at its version.
    Landed(Landed),
    /// Nothing was changed and no commit written (a MERGE that matched
    /// nothing to change).
    Nothing,
    /// Another commit landed first; the body must be planned again on it.
    Lost,
}
