//! The HTTP scaffold every service process serves. Two listeners: the admin one
//! (`ADMIN_ADDR`) with `/healthz` (the process is alive), `/readyz` (Postgres and NATS
//! answer and the services started) and `/metrics` (Prometheus), for the kubelet and
//! the monitoring only; the API one (`HTTP_ADDR`) with whatever routes the services
//! mount. Every API request passes the edge first: a request id (taken from
//! `x-request-id` or made, echoed on the response and on every log line of the
//! request), the incoming `traceparent` continued, the bearer token verified (the
//! caller handed to the routes, see [`crate::identity`]), and per-route metrics
//! (`http_requests_total`, `http_request_duration_seconds` by route, method and
//! status). Graceful shutdown: stop accepting, finish in-flight requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::Instrument;

use crate::identity::{AuthError, Authenticator, DevIssuer, Identified};

/// The largest body a route reads whole, unless it says otherwise.
pub const MAX_BODY: usize = 1024 * 1024;

/// The request id of a request (an extension set by the edge).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// What the process serves. Services mount their routers into it; readiness is a set
/// of named conditions, each either met or failing with a reason.
#[derive(Clone, Default)]
pub struct HttpHost {
    routes: Arc<RwLock<Router>>,
    readiness: Arc<RwLock<BTreeMap<String, Result<(), String>>>>,
    identity: Arc<RwLock<Option<Authenticator>>>,
    dev_issuer: Arc<RwLock<Option<Arc<DevIssuer>>>>,
    /// Every path mounted, as axum has it.
    paths: Arc<RwLock<Vec<String>>>,
    /// Each service's OpenAPI document, by service.
    documents: Arc<RwLock<BTreeMap<String, utoipa::openapi::OpenApi>>>,
}

/// A service's routes, with the paths they are mounted at, so that what is served
/// can be held against the service's OpenAPI document.
pub struct Routes<S = ()> {
    router: Router<S>,
    paths: Vec<String>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Routes {
            router: Router::new(),
            paths: Vec::new(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn route(mut self, path: &str, method_router: axum::routing::MethodRouter<S>) -> Self {
        self.paths.push(path.to_owned());
        self.router = self.router.route(path, method_router);
        self
    }

    /// Layers and state, once every route is in.
    pub fn finish(self, f: impl FnOnce(Router<S>) -> Router) -> Routes {
        Routes {
            router: f(self.router),
            paths: self.paths,
        }
    }
}

impl Routes {
    /// Wraps every route in `f` (a layer that needs the matched route).
    pub fn map(self, f: impl FnOnce(Router) -> Router) -> Routes {
        Routes {
            router: f(self.router),
            paths: self.paths,
        }
    }
}

impl HttpHost {
    pub fn new() -> Self {
        let host = Self::default();
        *host.routes.write().unwrap_or_else(|e| e.into_inner()) =
            Router::new().fallback(unknown_route);
        host
    }

    /// Adds a service's routes (each measured by route).
    pub fn mount(&self, routes: Routes) {
        let router = routes
            .router
            .route_layer(axum::middleware::from_fn(measured));
        self.paths
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(routes.paths);
        let mut mounted = self.routes.write().unwrap_or_else(|e| e.into_inner());
        *mounted = std::mem::take(&mut *mounted).merge(router);
    }

    /// Every path mounted so far, as axum has it.
    pub fn mounted_paths(&self) -> Vec<String> {
        self.paths.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publishes a service's OpenAPI document: at `/openapi/{service}.json`, and merged
    /// with the others the process serves at `/openapi.json`.
    pub fn document(&self, service: &str, document: utoipa::openapi::OpenApi) {
        self.documents
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(service.to_owned(), document);
    }

    /// Whether every one of `services` has mounted its routes and its document.
    pub fn documented(&self, services: &[&str]) -> bool {
        let documents = self.documents.read().unwrap_or_else(|e| e.into_inner());
        services.iter().all(|s| documents.contains_key(*s))
    }

    /// The document of every service this process serves, merged.
    pub fn openapi(&self) -> Option<utoipa::openapi::OpenApi> {
        let documents = self.documents.read().unwrap_or_else(|e| e.into_inner());
        let mut all = documents.values().cloned();
        let mut merged = all.next()?;
        for document in all {
            merged.merge(document);
        }
        if documents.len() > 1 {
            merged.info.title = "renewal (every service)".into();
        }
        Some(merged)
    }

    /// Sets how callers are identified; without it every route that needs a caller
    /// answers 401. The development issuer's keys are then served at
    /// `/.well-known/jwks.json`.
    pub fn set_identity(&self, auth: Authenticator, dev: Option<Arc<DevIssuer>>) {
        *self.identity.write().unwrap_or_else(|e| e.into_inner()) = Some(auth);
        *self.dev_issuer.write().unwrap_or_else(|e| e.into_inner()) = dev;
    }

    /// Adds web pages (the console): measured by route like the APIs, but not part of
    /// any service's OpenAPI document.
    pub fn mount_pages(&self, router: Router) {
        let router = router.route_layer(axum::middleware::from_fn(measured));
        let mut mounted = self.routes.write().unwrap_or_else(|e| e.into_inner());
        *mounted = std::mem::take(&mut *mounted).merge(router);
    }

    /// The development issuer, when the process runs one.
    pub fn dev_issuer(&self) -> Option<Arc<DevIssuer>> {
        self.dev_issuer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How callers are identified, once set.
    pub fn authenticator(&self) -> Option<Authenticator> {
        self.identity
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets one readiness condition (e.g. `postgres`, `nats`, `lists`).
    pub fn set_ready(&self, what: &str, state: Result<(), String>) {
        let mut readiness = self.readiness.write().unwrap_or_else(|e| e.into_inner());
        readiness.insert(what.to_owned(), state);
    }

    /// Ready when at least one condition is known and all are met.
    pub fn readiness(&self) -> (bool, BTreeMap<String, Result<(), String>>) {
        let readiness = self
            .readiness
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let ready = !readiness.is_empty() && readiness.values().all(Result::is_ok);
        (ready, readiness)
    }

    /// The admin listener's routes: health, readiness, metrics.
    pub fn admin_router(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(|| async { metrics_handle().render() }))
            .with_state(self.clone())
    }

    /// The API listener's routes: what the services mounted, behind the edge.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .route("/openapi.json", get(openapi_document))
            .route("/openapi/{service}", get(service_document))
            .fallback(dispatch)
            .with_state(self.clone())
            .layer(axum::middleware::from_fn_with_state(self.clone(), edge))
            // Bodies a route reads whole stop here (routes may set their own).
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .layer(tower_http::catch_panic::CatchPanicLayer::new())
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(30),
            ))
    }

    /// Serves the API until `cancel` fires, then lets in-flight requests finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let app = self.router();
        // The peer's address, for allow-lists (the SMS vendor's webhook).
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(without_nagle(listener), app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await
    }

    /// Serves health, readiness and metrics until `cancel` fires.
    pub async fn serve_admin(
        self,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let app = self.admin_router();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await
    }
}

/// The listener with Nagle's algorithm off on every connection it accepts: an answer
/// that hyper writes in more than one piece (a long page, a streamed body) goes out at
/// once instead of its tail waiting up to 40 ms for the caller's delayed ACK.
fn without_nagle(
    listener: TcpListener,
) -> axum::serve::TapIo<TcpListener, fn(&mut tokio::net::TcpStream)> {
    use axum::serve::ListenerExt;
    listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on an accepted connection");
        }
    })
}

/// The edge every API request passes: request id, trace, caller.
async fn edge(State(host): State<HttpHost>, mut request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let span = tracing::info_span!("http", request_id = %request_id, method = %request.method());
    crate::telemetry::adopt_traceparent(&span, traceparent.as_deref());
    async move {
        let authorization = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .cloned();
        let identified = identify(&host, authorization).await;
        request.extensions_mut().insert(Identified(identified));
        request
            .extensions_mut()
            .insert(RequestId(request_id.clone()));
        let mut response = next.run(request).await;
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", value);
        }
        response
    }
    .instrument(span)
    .await
}

/// Who the bearer token says is calling (checked only when a route asks).
async fn identify(
    host: &HttpHost,
    authorization: Option<HeaderValue>,
) -> Result<Arc<crate::identity::Caller>, AuthError> {
    let header = authorization.ok_or(AuthError::Missing)?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .ok_or_else(|| AuthError::Malformed("use Authorization: Bearer <token>".into()))?;
    let auth = host
        .authenticator()
        .ok_or_else(|| AuthError::Jwks("no identity provider configured".into()))?;
    auth.verify(token.trim()).await
}

/// Counts and times each request by its route.
async fn measured(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("method", method), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn openapi_document(State(host): State<HttpHost>) -> Response {
    match host.openapi() {
        Some(document) => axum::Json(document).into_response(),
        None => crate::problem::Problem::new(StatusCode::NOT_FOUND, "not_found", "no API here")
            .into_response(),
    }
}

async fn service_document(
    State(host): State<HttpHost>,
    axum::extract::Path(file): axum::extract::Path<String>,
) -> Response {
    let service = file.strip_suffix(".json").unwrap_or(&file);
    let documents = host.documents.read().unwrap_or_else(|e| e.into_inner());
    match documents.get(service) {
        Some(document) => axum::Json(document.clone()).into_response(),
        None => crate::problem::Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no service {service:?} here"),
        )
        .into_response(),
    }
}

async fn unknown_route(request: Request) -> Response {
    crate::problem::Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {} {}", request.method(), request.uri().path()),
    )
    .into_response()
}

async fn jwks(State(host): State<HttpHost>) -> Response {
    let dev = host
        .dev_issuer
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match dev {
        Some(dev) => axum::Json(dev.jwks_json()).into_response(),
        None => crate::problem::Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no development issuer here: keys come from the identity provider",
        )
        .into_response(),
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn dispatch(State(host): State<HttpHost>, request: Request) -> Response {
    let routes = host
        .routes
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match routes.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

async fn readyz(State(host): State<HttpHost>) -> Response {
    let (ready, conditions) = host.readiness();
    let body: serde_json::Map<String, serde_json::Value> = conditions
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Ok(()) => serde_json::Value::String("ok".into()),
                Err(reason) => serde_json::Value::String(reason),
            };
            (k, v)
        })
        .collect();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({ "ready": ready, "checks": body })),
    )
        .into_response()
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
