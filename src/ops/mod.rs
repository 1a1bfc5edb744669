//! Operator commands, beside the daemon.

pub mod demo;
pub mod maintenance;
pub mod offsets;
pub mod restore;
pub mod status;
pub mod tables;
pub mod validate;
pub mod verify;
