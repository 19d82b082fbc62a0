//! The four services as the console calls them: over HTTP, with the signed-in person's
//! token, so every refusal is the service's own (its problem+json detail is shown on
//! the page). Reports are kept for [`REPORT_TTL`] per role and scope: the season's
//! tallies scan every case of the year (about two seconds at a million policies), and
//! a page opened again within the minute, by anyone who sees the same, need not scan
//! again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::{ConsoleConfig, ConsoleError};

/// How long a report is shown again before it is asked for anew.
pub const REPORT_TTL: Duration = Duration::from_secs(60);
/// Reports kept at most.
const MAX_KEPT: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Lists,
    Assignment,
    Scheduler,
    Dispatch,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Lists => "lists",
            Service::Assignment => "assignment",
            Service::Scheduler => "scheduler",
            Service::Dispatch => "dispatch",
        }
    }
}

type Kept = HashMap<(String, String), (Instant, Value)>;

#[derive(Clone)]
pub struct Services {
    http: reqwest::Client,
    urls: Arc<[String; 4]>,
    reports: Arc<Mutex<Kept>>,
}

/// A file a service answered (a CSV of rejections).
pub struct Download {
    pub content_type: String,
    pub body: bytes::Bytes,
}

impl Services {
    pub fn new(config: &ConsoleConfig) -> Services {
        let trim = |u: &str| u.trim_end_matches('/').to_owned();
        Services {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(32)
                .build()
                .unwrap_or_default(),
            urls: Arc::new([
                trim(&config.lists_url),
                trim(&config.assignment_url),
                trim(&config.scheduler_url),
                trim(&config.dispatch_url),
            ]),
            reports: Default::default(),
        }
    }

    fn url(&self, service: Service, path: &str) -> String {
        let base = &self.urls[service as usize];
        format!("{base}{path}")
    }

    // The calls below take the path at once (not into the future they return), so a
    // path made in the call's own arguments may be dropped before it is awaited.

    pub fn get(
        &self,
        service: Service,
        path: &str,
        token: &SecretString,
    ) -> impl Future<Output = Result<Value, ConsoleError>> + use<> {
        let request = self.http.get(self.url(service, path));
        send(service, request, token.clone())
    }

    pub fn post(
        &self,
        service: Service,
        path: &str,
        token: &SecretString,
        body: &Value,
    ) -> impl Future<Output = Result<Value, ConsoleError>> + use<> {
        self.with_body(reqwest::Method::POST, service, path, token, body)
    }

    pub fn put(
        &self,
        service: Service,
        path: &str,
        token: &SecretString,
        body: &Value,
    ) -> impl Future<Output = Result<Value, ConsoleError>> + use<> {
        self.with_body(reqwest::Method::PUT, service, path, token, body)
    }

    pub fn patch(
        &self,
        service: Service,
        path: &str,
        token: &SecretString,
        body: &Value,
    ) -> impl Future<Output = Result<Value, ConsoleError>> + use<> {
        self.with_body(reqwest::Method::PATCH, service, path, token, body)
    }

    /// A call with a JSON body.
    fn with_body(
        &self,
        method: reqwest::Method,
        service: Service,
        path: &str,
        token: &SecretString,
        body: &Value,
    ) -> impl Future<Output = Result<Value, ConsoleError>> + use<> {
        let request = self
            .http
            .request(method, self.url(service, path))
            .json(body);
        send(service, request, token.clone())
    }

    /// The client itself (the sign-in's token exchange).
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// A CSV file posted as it came.
    pub async fn post_csv(
        &self,
        service: Service,
        path: &str,
        token: &SecretString,
        body: bytes::Bytes,
    ) -> Result<Value, ConsoleError> {
        let request = self
            .http
            .post(self.url(service, path))
            .header(reqwest::header::CONTENT_TYPE, "text/csv")
            .body(body);
        send(service, request, token.clone()).await
    }

    /// A report, kept for [`REPORT_TTL`] for `who` (a role and scope).
    pub async fn report(
        &self,
        service: Service,
        path: &str,
        token: &SecretString,
        who: &str,
    ) -> Result<Value, ConsoleError> {
        let key = (who.to_owned(), self.url(service, path));
        if let Some((at, value)) = self
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            && at.elapsed() < REPORT_TTL
        {
            return Ok(value.clone());
        }
        let value = self.get(service, path, token).await?;
        let mut kept = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= MAX_KEPT {
            kept.retain(|_, (at, _)| at.elapsed() < REPORT_TTL);
        }
        kept.insert(key, (Instant::now(), value.clone()));
        Ok(value)
    }

    /// A file as the service answered it.
    pub async fn download(
        &self,
        service: Service,
        path: &str,
        token: &SecretString,
    ) -> Result<Download, ConsoleError> {
        let unreachable = |source| ConsoleError::Unreachable {
            service: service.name(),
            source,
        };
        let response = self
            .http
            .get(self.url(service, path))
            .bearer_auth(token.expose_secret())
            .send()
            .await
            .map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(refusal(service, response).await);
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let body = response.bytes().await.map_err(unreachable)?;
        Ok(Download { content_type, body })
    }
}
/// Sends a call with the person's token; the answer's JSON, or the refusal.
async fn send(
    service: Service,
    request: reqwest::RequestBuilder,
    token: SecretString,
) -> Result<Value, ConsoleError> {
    let unreachable = |source| ConsoleError::Unreachable {
        service: service.name(),
        source,
    };
    let response = request
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(refusal(service, response).await);
    }
    let bytes = response.bytes().await.map_err(unreachable)?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// A service's refusal, from its problem+json.
async fn refusal(service: Service, response: reqwest::Response) -> ConsoleError {
    let status = response.status().as_u16();
    let problem: Value = response.json().await.unwrap_or(Value::Null);
    ConsoleError::Refused {
        service: service.name(),
        status,
        code: problem["code"].as_str().unwrap_or("error").to_owned(),
        detail: problem["detail"]
            .as_str()
            .unwrap_or("the service refused")
            .to_owned(),
    }
}
