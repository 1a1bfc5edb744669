//! What the daemon says about itself: counters and the metrics endpoint.

pub mod events;
pub mod logging;
pub mod metrics;
pub mod stats;
