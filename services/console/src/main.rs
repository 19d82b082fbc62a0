//! The console as its own process (Kubernetes): no database and no NATS of its own,
//! only the four services' APIs (`CONSOLE_SERVICES_URL` or one URL each) and the
//! identity provider (`AUTH_*` to verify tokens, `CONSOLE_OIDC_*` to sign people in).

use std::process::ExitCode;
use std::sync::Arc;

use renewal_platform::HttpHost;
use renewal_platform::config::{Env, Settings};
use renewal_platform::identity::{AuthConfig, Authenticator};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    renewal_platform::install_crypto_provider();
    let env = Env::process();
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("renewal-console: configuration error: {e}");
        ExitCode::from(2)
    };
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let local = format!("http://127.0.0.1:{}", settings.http_addr.port());
    let config = match renewal_console::ConsoleConfig::from_env(&env, &local) {
        Ok(Some(c)) => c,
        Ok(None) => {
            return fail(
                &"set CONSOLE_OIDC_AUTHORIZE_URL and CONSOLE_OIDC_TOKEN_URL (or AUTH_DEV=on)",
            );
        }
        Err(e) => return fail(&e),
    };
    let auth = match AuthConfig::from_env(&env) {
        Ok(a) => a,
        Err(e) => return fail(&e),
    };
    let telemetry = match renewal_platform::telemetry::init("console", "info") {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let code = serve(settings, auth, config).await;
    telemetry.shutdown();
    code
}

async fn serve(
    settings: Settings,
    auth: AuthConfig,
    config: renewal_console::ConsoleConfig,
) -> ExitCode {
    let (authenticator, dev): (Authenticator, _) = match Authenticator::from_config(&auth).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "the identity provider cannot be reached");
            return ExitCode::FAILURE;
        }
    };
    let host = HttpHost::new();
    host.set_identity(authenticator, dev.map(Arc::new));
    if let Err(e) = renewal_console::Console::mount(&host, config) {
        tracing::error!(error = %e, "the console cannot start");
        return ExitCode::FAILURE;
    }
    host.set_ready("console", Ok(()));
    let cancel = CancellationToken::new();
    renewal_platform::shutdown::cancel_on_signal(cancel.clone());
    let (admin, api) = match (
        renewal_platform::http::bind(settings.admin_addr).await,
        renewal_platform::http::bind(settings.http_addr).await,
    ) {
        (Ok(admin), Ok(api)) => (admin, api),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot listen (ADMIN_ADDR, HTTP_ADDR)");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %settings.http_addr, "serving the console at /console/");
    tokio::spawn(host.clone().serve_admin(admin, cancel.clone()));
    match host.serve(api, cancel).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "the console stopped");
            ExitCode::FAILURE
        }
    }
}
