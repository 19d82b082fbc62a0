//! The dispatch service as its own process (Kubernetes). `renewal-dispatch migrate` only
//! applies its migrations.

use std::process::ExitCode;

use renewal_platform::process::{Program, main as run_main};

#[tokio::main]
async fn main() -> ExitCode {
    let migrate_only = std::env::args().nth(1).as_deref() == Some("migrate");
    // Its own settings are checked before anything is connected to.
    if !migrate_only && let Err(e) = renewal_dispatch::DispatchConfig::from_env() {
        eprintln!("renewal-dispatch: configuration error: {e}");
        return ExitCode::from(2);
    }
    let program = Program {
        name: "dispatch",
        serves: &["dispatch"],
        migrate: |pool| Box::pin(renewal_dispatch::migrate(pool)),
        run: |deps, cancel| Box::pin(renewal_dispatch::run(deps, cancel)),
    };
    run_main(program, migrate_only).await
}
