//! The assignment service as its own process (Kubernetes). `renewal-assignment migrate` only
//! applies its migrations.

use std::process::ExitCode;

use renewal_platform::process::{Program, main as run_main};

#[tokio::main]
async fn main() -> ExitCode {
    let migrate_only = std::env::args().nth(1).as_deref() == Some("migrate");
    let program = Program {
        name: "assignment",
        serves: &["assignment"],
        migrate: |pool| Box::pin(renewal_assignment::migrate(pool)),
        run: |deps, cancel| Box::pin(renewal_assignment::run(deps, cancel)),
    };
    run_main(program, migrate_only).await
}
