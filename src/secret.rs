//! [`Secret`]: a string that never shows itself in `Debug` and has no `Display`.
//!
//! Passwords, SASL credentials, S3 secret keys and arbitrary librdkafka properties
//! (which may hold any of those) are kept in this type from the moment the config is
//! parsed; only the code that hands them to a client calls [`Secret::expose`].

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A sensitive string whose `Debug` prints `[redacted]`.
///
/// It has no `Display` on purpose (as iceberg-rust's `sensitive.rs` argues): a
/// `Display` that redacts would let `format!("{user}:{password}")` compile and
/// silently send `[redacted]` to a server, and one that does not would leak into
/// logs. Code that needs the value says so with [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wrap a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value, for handing to a client library. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        let in_a_struct = format!("{:?}", Some(("user", s.clone())));
        assert!(!in_a_struct.contains("hunter2"), "{in_a_struct}");
        assert_eq!(s.expose(), "hunter2");
    }
}
