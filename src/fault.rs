//! Errors of our own that travel inside delta-rs' error type.
//!
//! Some of our code runs where delta-rs' `DeltaTableError` is the error type
//! (inside a commit attempt, a Parquet writer's task, the offset store). Our
//! typed error goes there as `DeltaTableError::GenericError`, wrapped in
//! [`Permanent`], so that classification (`sink::retry`) finds it by type, never
//! by its wording: a [`Permanent`] is never retried.

use deltalake::DeltaTableError;

/// A typed error that retrying will not fix.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Permanent(Box<dyn std::error::Error + Send + Sync>);

/// `e` as a delta-rs error that is never retried.
pub fn permanent(e: impl std::error::Error + Send + Sync + 'static) -> DeltaTableError {
    DeltaTableError::GenericError {
        source: Box::new(Permanent(Box::new(e))),
    }
}

/// Whether `e` is one of ours marked [`Permanent`].
pub fn is_permanent(e: &DeltaTableError) -> bool {
    matches!(e, DeltaTableError::GenericError { source } if source.is::<Permanent>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the thing is broken")]
    struct Broken;

    #[test]
    fn a_permanent_error_keeps_its_message_and_is_known_by_type() {
        let e = permanent(Broken);
        assert!(is_permanent(&e));
        assert!(e.to_string().contains("the thing is broken"), "{e}");
        let theirs = DeltaTableError::GenericError {
            source: Box::new(Broken),
        };
        assert!(!is_permanent(&theirs));
    }
}
