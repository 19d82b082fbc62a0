//! All four renewal services in one process: `renewal run` (real clock), `renewal
//! demo` (a simulated season with a funnel report) and `renewal migrate`. The
//! simulation harness here is also what the end-to-end tests drive.

pub mod bench;
pub mod bench_assignment;
pub mod bench_console;
pub mod bench_dispatch;
pub mod bench_scheduler;
pub mod chaos;
pub mod cli_import;
pub mod cli_pii;
pub mod demo;
pub mod nats_config;
pub mod simulation;
pub mod system;
pub mod vendor_sim;
