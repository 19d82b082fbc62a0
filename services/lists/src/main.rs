//! The lists service as its own process (Kubernetes). `renewal-lists migrate` only
//! applies its migrations.

use std::process::ExitCode;

use renewal_platform::process::{Program, main as run_main};

#[tokio::main]
async fn main() -> ExitCode {
    let migrate_only = std::env::args().nth(1).as_deref() == Some("migrate");
    if !migrate_only && let Err(e) = renewal_lists::ListsConfig::from_env() {
        eprintln!("renewal-lists: configuration error: {e}");
        return ExitCode::from(2);
    }
    let program = Program {
        name: "lists",
        serves: &["lists"],
        migrate: |pool| Box::pin(renewal_lists::migrate(pool)),
        run: |deps, cancel| Box::pin(renewal_lists::run(deps, cancel)),
    };
    run_main(program, migrate_only).await
}
