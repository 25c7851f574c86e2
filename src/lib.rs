pub mod broker;
pub mod config;
pub mod shutdown;
pub mod telemetry;
