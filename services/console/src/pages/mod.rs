//! The console's pages. Each page module reads through the services' APIs as the
//! signed-in person and renders a minijinja template; actions are forms (with the
//! CSRF token) that htmx posts and whose answer replaces part of the page. Which page
//! a role sees is [`PAGES`]; the services still decide every read and every action.

pub mod cases;
pub mod claims;
pub mod operations;
pub mod organisation;
pub mod plans;
pub mod season;
pub mod supervisor;
pub mod workbench;

use axum::extract::Path;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use minijinja::{Environment, State as TemplateState, Value};
use renewal_platform::Role;
use serde::Serialize;

use crate::i18n::{self, Lang};
use crate::sessions::{Session, SignedIn};
use crate::{Console, ConsoleError};

/// The largest CSV the import page takes (the lists service has its own, larger cap).
pub const MAX_UPLOAD: usize = 64 * 1024 * 1024;

/// Every page of the menu: its address, its word, the roles it is for.
pub const PAGES: &[(&str, &str, &[Role])] = &[
    (
        "season",
        "nav.season",
        &[
            Role::Analyst,
            Role::HqAdmin,
            Role::CityAdmin,
            Role::Supervisor,
            Role::BranchAdmin,
        ],
    ),
    (
        "claims",
        "nav.claims",
        &[
            Role::BranchAdmin,
            Role::Supervisor,
            Role::CityAdmin,
            Role::HqAdmin,
        ],
    ),
    (
        "pool",
        "nav.pool",
        &[
            Role::CityAdmin,
            Role::HqAdmin,
            Role::BranchAdmin,
            Role::Supervisor,
        ],
    ),
    (
        "research",
        "nav.research",
        &[Role::CityAdmin, Role::HqAdmin],
    ),
    (
        "workbench",
        "nav.workbench",
        &[Role::Agent, Role::CallCenter],
    ),
    (
        "supervisor",
        "nav.supervisor",
        &[
            Role::Supervisor,
            Role::BranchAdmin,
            Role::CityAdmin,
            Role::HqAdmin,
        ],
    ),
    (
        "operations",
        "nav.operations",
        &[Role::HqAdmin, Role::Importer],
    ),
    ("plans", "nav.plans", &[Role::HqAdmin, Role::CityAdmin]),
    (
        "organisation",
        "nav.organisation",
        &[Role::HqAdmin, Role::CityAdmin, Role::BranchAdmin],
    ),
    (
        "cases",
        "nav.case",
        &[
            Role::Agent,
            Role::Supervisor,
            Role::BranchAdmin,
            Role::CityAdmin,
            Role::HqAdmin,
            Role::CallCenter,
        ],
    ),
];

fn roles_of(page: &str) -> &'static [Role] {
    PAGES
        .iter()
        .find(|(p, _, _)| *p == page)
        .map_or(&[], |(_, _, roles)| roles)
}

/// Refuses a page the person's roles do not open.
pub fn require(signed: &SignedIn, page: &str) -> Result<(), ConsoleError> {
    let roles = roles_of(page);
    if signed
        .session
        .caller
        .roles
        .iter()
        .any(|r| roles.contains(r))
    {
        Ok(())
    } else {
        Err(ConsoleError::NotForYou)
    }
}

#[derive(Serialize)]
struct NavItem {
    href: String,
    word: &'static str,
    current: bool,
}

/// What every page's frame shows: the person, their menu, the language, the CSRF token.
#[derive(Serialize)]
pub struct Frame {
    lang: Lang,
    html_lang: &'static str,
    csrf: String,
    who: String,
    role: &'static str,
    scope: String,
    nav: Vec<NavItem>,
    page: &'static str,
}

impl Frame {
    pub fn of(session: &Session, page: &'static str) -> Frame {
        let caller = &session.caller;
        let nav = PAGES
            .iter()
            .filter(|(p, _, roles)| *p != "cases" && caller.roles.iter().any(|r| roles.contains(r)))
            .map(|(p, word, _)| NavItem {
                href: format!("/console/{p}"),
                word,
                current: *p == page,
            })
            .collect();
        let scope = [&caller.city_code, &caller.branch_code, &caller.agent_code]
            .into_iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join(" / ");
        Frame {
            lang: session.lang,
            html_lang: session.lang.html(),
            csrf: session.csrf.clone(),
            who: caller.subject.clone(),
            role: caller.main_role(),
            scope,
            nav,
            page,
        }
    }
}

/// `{{ t("key") }}`: the word in the page's language.
fn translate(state: &TemplateState, key: &str) -> String {
    let lang = state
        .lookup("lang")
        .and_then(|v| v.as_str().and_then(Lang::parse))
        .unwrap_or_default();
    i18n::text(lang, key).to_owned()
}

/// `{{ fen|yuan }}`: money as the SMS prints it.
fn yuan(fen: i64) -> String {
    format!(
        "{}{}.{:02}",
        if fen < 0 { "-" } else { "" },
        fen.abs() / 100,
        fen.abs() % 100
    )
}

/// `{{ ratio|percent }}`.
fn percent(value: Value) -> String {
    match f64::try_from(value) {
        Ok(v) => format!("{:.1}%", v * 100.0),
        Err(_) => "—".to_owned(),
    }
}

/// `{{ instant|when }}`: an RFC 3339 instant as minutes, in the business's time zone.
fn when(value: Value) -> String {
    let Some(text) = value.as_str() else {
        return "—".to_owned();
    };
    match chrono::DateTime::parse_from_rfc3339(text) {
        Ok(t) => t
            .with_timezone(&chrono_tz::Asia::Shanghai)
            .format("%Y-%m-%d %H:%M")
            .to_string(),
        Err(_) => text.to_owned(),
    }
}

macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../templates/", $name)))),*]
    };
}

const TEMPLATES: &[(&str, &str)] = templates!(
    "layout.html",
    "sign_in.html",
    "dev_sign_in.html",
    "season.html",
    "claims.html",
    "claims_section.html",
    "results.html",
    "city_list.html",
    "case.html",
    "workbench.html",
    "workbench_task.html",
    "supervisor.html",
    "operations.html",
    "operations_done.html",
    "plans.html",
    "plans_diff.html",
    "organisation.html",
    "notice.html",
);

/// Every template, parsed once at start (a broken one stops the start).
pub fn templates() -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    for (name, source) in TEMPLATES {
        env.add_template(name, source)?;
    }
    env.add_function("t", translate);
    env.add_filter("yuan", yuan);
    env.add_filter("percent", percent);
    env.add_filter("when", when);
    Ok(env)
}

/// A page's values: `page! { name, other => expression }`, each serialized.
#[macro_export]
macro_rules! page {
    (@value $key:ident => $value:expr) => { $value };
    (@value $key:ident) => { $key };
    ($($key:ident $(=> $value:expr)?),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut map = serde_json::Map::new();
        $(map.insert(
            stringify!($key).to_owned(),
            serde_json::to_value(&$crate::page!(@value $key $(=> $value)?)).unwrap_or_default(),
        );)*
        serde_json::Value::Object(map)
    }};
}

/// `page` with `extra` values beside its own, for a template.
fn with(mut page: serde_json::Value, extra: Vec<(&str, serde_json::Value)>) -> Value {
    if let serde_json::Value::Object(map) = &mut page {
        for (key, value) in extra {
            map.insert(key.to_owned(), value);
        }
    }
    Value::from(minijinja::value::Serde(&page))
}

/// A page inside the frame.
pub fn render(
    console: &Console,
    template: &str,
    frame: Frame,
    page: serde_json::Value,
) -> Result<Response, ConsoleError> {
    let lang = frame.lang;
    let frame = serde_json::to_value(&frame).unwrap_or_default();
    let context = with(page, vec![("lang", lang.code().into()), ("frame", frame)]);
    let html = console.templates.get_template(template)?.render(context)?;
    Ok(Html(html).into_response())
}

/// A page without the frame (sign-in) or a part of a page (an htmx answer).
pub fn render_bare(
    console: &Console,
    template: &str,
    lang: Lang,
    page: serde_json::Value,
) -> Result<Response, ConsoleError> {
    let context = with(
        page,
        vec![
            ("lang", lang.code().into()),
            ("html_lang", lang.html().into()),
        ],
    );
    let html = console.templates.get_template(template)?.render(context)?;
    Ok(Html(html).into_response())
}

/// A part of a page for the signed-in person (their language and CSRF token).
pub fn part(
    console: &Console,
    signed: &SignedIn,
    template: &str,
    mut page: serde_json::Value,
) -> Result<Response, ConsoleError> {
    if let serde_json::Value::Object(map) = &mut page {
        map.insert("csrf".into(), signed.session.csrf.clone().into());
    }
    render_bare(console, template, signed.session.lang, page)
}

/// What happened, said in the page's notice area.
pub fn notice(
    console: &Console,
    signed: &SignedIn,
    ok: bool,
    message: &str,
) -> Result<Response, ConsoleError> {
    part(console, signed, "notice.html", crate::page! { ok, message })
}

/// HTML-escaped text (for answers built without a template).
pub fn escape(text: &str) -> String {
    minijinja::HtmlEscape(text).to_string()
}

/// Whether a request came from htmx (answer a part, not a page).
pub fn from_htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request")
}

const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../assets/console.css"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/console.js"),
    ),
    (
        "vendor/htmx-2.0.11.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/vendor/htmx-2.0.11.min.js"),
    ),
    (
        "vendor/echarts-6.1.0.common.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../assets/vendor/echarts-6.1.0.common.min.js"),
    ),
];

/// The stylesheet, the page script and the vendored libraries.
pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

pub fn routes() -> axum::Router<Console> {
    axum::Router::new()
        .merge(season::routes())
        .merge(claims::routes())
        .merge(cases::routes())
        .merge(workbench::routes())
        .merge(supervisor::routes())
        .merge(operations::routes())
        .merge(plans::routes())
        .merge(organisation::routes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses_and_every_word_it_uses_is_in_both_languages() {
        templates().expect("templates");
        for (name, source) in TEMPLATES {
            for part in source.split("t(\"").skip(1) {
                let key = part.split('"').next().unwrap_or_default();
                if key.ends_with('.') {
                    continue; // a key made in the template ("outcome." ~ o)
                }
                assert!(
                    i18n::known(key),
                    "{name} uses {key:?}, which the table lacks"
                );
            }
        }
    }

    #[test]
    fn money_and_rates_read_as_people_expect() {
        assert_eq!(yuan(420_000), "4200.00");
        assert_eq!(yuan(-32_005), "-320.05");
        assert_eq!(percent(Value::from(0.7512)), "75.1%");
        assert_eq!(percent(Value::from(())), "—");
    }
}
