//! *Supervisor*: the branch's at-risk cases (the T-10 alerts of cases still open, each
//! with its owner and last call) and each owner's progress for a day (calls, promises,
//! renewals), from assignment. A city or HQ person names the branch.

use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use crate::pages::claims::code;
use crate::pages::{self, require};
use crate::services::Service;
use crate::sessions::SignedIn;
use crate::sign_in::frame;
use crate::{Console, ConsoleError};

pub fn routes() -> axum::Router<Console> {
    axum::Router::new().route("/console/supervisor", get(supervisor))
}

#[derive(Deserialize)]
struct Which {
    branch: Option<String>,
    day: Option<String>,
}

async fn supervisor(
    State(console): State<Console>,
    signed: SignedIn,
    Query(which): Query<Which>,
) -> Result<Response, ConsoleError> {
    require(&signed, "supervisor")?;
    let branch = code(which.branch)?.or_else(|| signed.session.caller.branch_code.clone());
    let day = match which.day.filter(|d| !d.is_empty()) {
        Some(d) => Some(
            chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d")
                .map_err(|_| ConsoleError::BadInput(format!("{d:?} is not a date (YYYY-MM-DD)")))?,
        ),
        None => None,
    };
    let (alerts, progress) = match &branch {
        Some(b) => {
            let token = &signed.session.token;
            let day_q = day.map(|d| format!("&day={d}")).unwrap_or_default();
            futures::try_join!(
                console.services.get(
                    Service::Assignment,
                    &format!("/v1/branches/{b}/alerts"),
                    token
                ),
                console.services.get(
                    Service::Assignment,
                    &format!("/v1/reports/owner-progress?branch={b}{day_q}"),
                    token
                ),
            )?
        }
        None => (json!({}), json!({})),
    };
    let page = crate::page! { branch, day => day.map(|d| d.to_string()), alerts, progress };
    pages::render(
        &console,
        "supervisor.html",
        frame(&signed, "supervisor"),
        page,
    )
}
