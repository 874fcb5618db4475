//! placeholder
pub mod config;
pub mod pricing;
pub mod protocol;
