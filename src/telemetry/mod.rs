//! What the daemon says about itself: counters and the metrics endpoint.

pub mod metrics;
pub mod stats;
