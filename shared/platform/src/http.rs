//! The HTTP scaffold every service process serves: `/healthz` (the process is alive),
//! `/readyz` (Postgres and NATS answer and the services started), `/metrics`
//! (Prometheus), plus whatever routes the services mount. Graceful shutdown: stop
//! accepting, finish in-flight requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// What the process serves. Services mount their routers into it; readiness is a set
/// of named conditions, each either met or failing with a reason.
#[derive(Clone, Default)]
pub struct HttpHost {
    routes: Arc<RwLock<Router>>,
    readiness: Arc<RwLock<BTreeMap<String, Result<(), String>>>>,
}

impl HttpHost {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a service's routes.
    pub fn mount(&self, router: Router) {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        *routes = std::mem::take(&mut *routes).merge(router);
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

    pub fn router(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(|| async { metrics_handle().render() }))
            .fallback(dispatch)
            .with_state(self.clone())
            .layer(tower_http::catch_panic::CatchPanicLayer::new())
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                Duration::from_secs(30),
            ))
    }

    /// Serves until `cancel` fires, then lets in-flight requests finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let app = self.router();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await
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
