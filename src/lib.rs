pub mod broker;
pub mod config;
pub mod partner_center;
pub mod shutdown;
pub mod telemetry;
