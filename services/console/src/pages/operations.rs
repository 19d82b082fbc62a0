//! *Operations* (HQ; an importer sees the import only): the phone-task queues (depth,
//! leased, dead, oldest waiting) and the dead tasks with a requeue button, the SMS that
//! did not reach their customer (failed and dead, numbers masked) with a resend button
//! and the numbers that opted out, from dispatch; the messages each service gave up on
//! (dead letters); and the policy import: a CSV uploaded with a progress bar, its
//! report, and its rejected rows to download.

use axum::Form;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use renewal_platform::Role;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::i18n::text;
use crate::pages::claims::urlencode;
use crate::pages::{self, require};
use crate::services::Service;
use crate::sessions::SignedIn;
use crate::sign_in::frame;
use crate::{Console, ConsoleError};

pub fn routes() -> axum::Router<Console> {
    axum::Router::new()
        .route("/console/operations", get(operations))
        .route("/console/operations/requeue", post(requeue))
        .route("/console/operations/resend", post(resend))
        .route("/console/operations/replay", post(replay))
        .route("/console/operations/import", post(import))
        .route(
            "/console/operations/imports/{id}/rejections",
            get(rejections),
        )
}

const SERVICES: [&str; 4] = ["lists", "assignment", "scheduler", "dispatch"];

/// Queues, dead tasks, failed and dead SMS, opt-outs and dead letters (HQ), asked for
/// all at once.
async fn for_hq(console: &Console, signed: &SignedIn) -> Result<Value, ConsoleError> {
    let token = &signed.session.token;
    let services = &console.services;
    let clients = [
        Service::Lists,
        Service::Assignment,
        Service::Scheduler,
        Service::Dispatch,
    ];
    let letters = futures::future::try_join_all(SERVICES.into_iter().zip(clients).map(
        |(service, client)| {
            services.get(
                client,
                &format!("/v1/dead-letters/{service}?page_size=20"),
                token,
            )
        },
    ));
    let sms = |path: &'static str| services.get(Service::Dispatch, path, token);
    let (queues, dead, failed_sms, dead_sms, opt_outs, letters) = futures::try_join!(
        services.get(Service::Dispatch, "/v1/phone-queues", token),
        services.get(
            Service::Dispatch,
            "/v1/phone-tasks?state=dead&page_size=100",
            token
        ),
        sms("/v1/sms?state=failed&page_size=100"),
        sms("/v1/sms?state=dead&page_size=100"),
        services.get(Service::Dispatch, "/v1/opt-outs?page_size=100", token),
        letters,
    )?;
    let undelivered: Vec<Value> = [&dead_sms["items"], &failed_sms["items"]]
        .into_iter()
        .filter_map(Value::as_array)
        .flatten()
        .cloned()
        .collect();
    let letters: Vec<Value> = SERVICES
        .into_iter()
        .zip(letters)
        .map(|(service, page)| json!({ "service": service, "items": page["items"] }))
        .collect();
    Ok(json!({
        "queues": queues,
        "dead": dead["items"],
        "sms": undelivered,
        "opt_outs": opt_outs["items"],
        "letters": letters,
    }))
}

async fn operations(
    State(console): State<Console>,
    signed: SignedIn,
) -> Result<Response, ConsoleError> {
    require(&signed, "operations")?;
    let hq = signed.session.caller.has(Role::HqAdmin);
    let ops = if hq {
        for_hq(&console, &signed).await?
    } else {
        Value::Null
    };
    let page = crate::page! { hq, ops };
    pages::render(
        &console,
        "operations.html",
        frame(&signed, "operations"),
        page,
    )
}

/// A form that names one task or message by id.
#[derive(Deserialize)]
struct OneOf {
    csrf: Option<String>,
    id: uuid::Uuid,
}

/// A dead task back in its queue.
async fn requeue(
    State(console): State<Console>,
    signed: SignedIn,
    headers: HeaderMap,
    Form(form): Form<OneOf>,
) -> Result<Response, ConsoleError> {
    let path = format!("/v1/phone-tasks/{}:requeue", form.id);
    act_on_one(
        &console,
        &signed,
        &headers,
        &form,
        &path,
        "operations.requeued",
    )
    .await
}

/// A failed or dead SMS sent again (dispatch refuses a reminder to a number that opted
/// out, or one whose case wants no more contacts, and says why).
async fn resend(
    State(console): State<Console>,
    signed: SignedIn,
    headers: HeaderMap,
    Form(form): Form<OneOf>,
) -> Result<Response, ConsoleError> {
    let path = format!("/v1/sms/{}:resend", form.id);
    act_on_one(
        &console,
        &signed,
        &headers,
        &form,
        &path,
        "operations.resent",
    )
    .await
}

/// Posts an operation on one task or message to dispatch as the person, and says
/// what happened (a refusal is shown as dispatch gave it).
async fn act_on_one(
    console: &Console,
    signed: &SignedIn,
    headers: &HeaderMap,
    form: &OneOf,
    path: &str,
    done: &str,
) -> Result<Response, ConsoleError> {
    require(signed, "operations")?;
    signed.check_csrf(headers, form.csrf.as_deref())?;
    console
        .services
        .post(Service::Dispatch, path, &signed.session.token, &json!({}))
        .await?;
    let said = format!("{} {}", text(signed.session.lang, done), form.id);
    pages::notice(console, signed, true, &said)
}

#[derive(Deserialize)]
struct Replay {
    csrf: Option<String>,
    service: String,
    id: i64,
}

/// A dead letter run again through the consumer that gave it up.
async fn replay(
    State(console): State<Console>,
    signed: SignedIn,
    headers: HeaderMap,
    Form(form): Form<Replay>,
) -> Result<Response, ConsoleError> {
    require(&signed, "operations")?;
    signed.check_csrf(&headers, form.csrf.as_deref())?;
    let clients = [
        Service::Lists,
        Service::Assignment,
        Service::Scheduler,
        Service::Dispatch,
    ];
    let client = SERVICES
        .iter()
        .position(|s| *s == form.service)
        .map(|i| clients[i])
        .ok_or_else(|| ConsoleError::BadInput(format!("no service {:?}", form.service)))?;
    let path = format!("/v1/dead-letters/{}/{}:replay", form.service, form.id);
    let answer = console
        .services
        .post(client, &path, &signed.session.token, &json!({}))
        .await?;
    let said = format!(
        "{} {} {}: {}",
        text(signed.session.lang, "operations.replayed"),
        form.service,
        form.id,
        answer["result"].as_str().unwrap_or("ok")
    );
    pages::notice(&console, &signed, true, &said)
}

/// The uploaded file and the form's token.
async fn upload(
    mut form: Multipart,
) -> Result<(Option<String>, String, bytes::Bytes), ConsoleError> {
    let (mut csrf, mut name, mut file) = (None, String::from("upload.csv"), None);
    let bad = |e: axum::extract::multipart::MultipartError| {
        ConsoleError::BadInput(format!("upload: {e}"))
    };
    while let Some(field) = form.next_field().await.map_err(bad)? {
        match field.name() {
            Some("csrf") => csrf = Some(field.text().await.map_err(bad)?),
            Some("file") => {
                if let Some(n) = field
                    .file_name()
                    .filter(|n| !n.is_empty() && n.len() <= 200)
                {
                    name = n.to_owned();
                }
                file = Some(field.bytes().await.map_err(bad)?);
            }
            _ => {}
        }
    }
    let file = file.ok_or_else(|| ConsoleError::BadInput("choose a CSV file".into()))?;
    Ok((csrf, name, file))
}

/// A policy CSV, imported by lists as the person.
async fn import(
    State(console): State<Console>,
    signed: SignedIn,
    headers: HeaderMap,
    form: Multipart,
) -> Result<Response, ConsoleError> {
    require(&signed, "operations")?;
    let (csrf, name, file) = upload(form).await?;
    signed.check_csrf(&headers, csrf.as_deref())?;
    let path = format!(
        "/v1/policies:import?encoding=auto&file_name={}",
        urlencode(&name)
    );
    let report = console
        .services
        .post_csv(Service::Lists, &path, &signed.session.token, file)
        .await?;
    pages::part(
        &console,
        &signed,
        "operations_done.html",
        crate::page! { report },
    )
}

/// An import's rejected rows, as the lists service writes them.
async fn rejections(
    State(console): State<Console>,
    signed: SignedIn,
    Path(id): Path<uuid::Uuid>,
) -> Result<Response, ConsoleError> {
    require(&signed, "operations")?;
    let file = console
        .services
        .download(
            Service::Lists,
            &format!("/v1/imports/{id}/rejections"),
            &signed.session.token,
        )
        .await?;
    let disposition = format!("attachment; filename=\"rejections-{id}.csv\"");
    Ok((
        [
            (header::CONTENT_TYPE, file.content_type),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        file.body,
    )
        .into_response())
}
