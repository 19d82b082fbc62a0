//! The scheduler service as its own process (Kubernetes). `renewal-scheduler migrate` only
//! applies its migrations.

use std::process::ExitCode;

use renewal_platform::process::{Program, main as run_main};

#[tokio::main]
async fn main() -> ExitCode {
    let migrate_only = std::env::args().nth(1).as_deref() == Some("migrate");
    // Its own settings are checked before anything is connected to.
    if !migrate_only && let Err(e) = renewal_scheduler::config::SchedulerConfig::from_env() {
        eprintln!("renewal-scheduler: configuration error: {e}");
        return ExitCode::from(2);
    }
    let program = Program {
        name: "scheduler",
        serves: &["scheduler"],
        migrate: |pool| Box::pin(renewal_scheduler::migrate(pool)),
        run: |deps, cancel| Box::pin(renewal_scheduler::run(deps, cancel)),
    };
    run_main(program, migrate_only).await
}
