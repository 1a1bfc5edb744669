//! What the daemon says about itself: counters and the metrics endpoint.

pub mod logging;
pub mod metrics;
pub mod stats;
