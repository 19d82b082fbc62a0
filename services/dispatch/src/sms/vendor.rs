//! The SMS vendor behind a small trait, so a second vendor can be added. The first is
//! Alibaba Cloud SMS (`SendSms` and `QuerySendDetails`, RPC style, API version
//! 2017-05-25); its base URL is configuration, so tests and the demo point it at a
//! local mock with the same wire format.
//!
//! `SendSms` is not idempotent (`OutId` is only a correlation id): every request the
//! vendor takes reaches the customer. So a failed send says whether the vendor surely
//! did not take it ([`VendorError::Unavailable`]: retried) or may have
//! ([`VendorError::InDoubt`]: asked about with `QuerySendDetails` before anything is
//! sent again).

use std::future::Future;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::DispatchConfig;
use crate::sms::signing;
use crate::sms::throttle::Throttle;

pub const ACTION: &str = "SendSms";
pub const QUERY_ACTION: &str = "QuerySendDetails";
pub const VERSION: &str = "2017-05-25";

pub struct SmsRequest<'a> {
    /// Our message id, sent as OutId and echoed in receipts.
    pub out_id: &'a str,
    pub mobile: &'a str,
    pub template_code: &'a str,
    pub template_params: &'a serde_json::Value,
}

#[derive(Debug)]
pub struct Accepted {
    pub vendor_message_id: String,
}

/// What the vendor's records say of a message it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// `SendStatus`: 1 waiting for the handset's receipt, 2 failed, 3 delivered.
    pub status: i64,
    pub err_code: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VendorError {
    /// The vendor did not take the request (no connection, 503, 429, throttled):
    /// worth retrying.
    #[error("vendor unavailable: {0}")]
    Unavailable(String),
    /// The request may have reached the vendor, but no answer says what became of it
    /// (a timeout, a connection reset, an unreadable answer, a gateway error).
    #[error("vendor answer lost: {0}")]
    InDoubt(String),
    /// Never worth retrying: a bad number, a template not approved, ...
    #[error("vendor refused ({code}): {message}")]
    Permanent { code: String, message: String },
}

pub trait SmsVendor: Send + Sync + 'static {
    /// Waits for the next request's slot under the account's rate limit.
    fn pace(&self) -> impl Future<Output = ()> + Send;

    /// Hands one message over (call [`SmsVendor::pace`] first).
    fn send(
        &self,
        request: SmsRequest<'_>,
    ) -> impl Future<Output = Result<Accepted, VendorError>> + Send;

    /// What the vendor knows of the message `out_id` to `mobile` sent on `day` (a date
    /// in China, where the vendor keeps its records); `None` when it has no record.
    fn query(
        &self,
        mobile: &str,
        out_id: &str,
        day: chrono::NaiveDate,
    ) -> impl Future<Output = Result<Option<Found>, VendorError>> + Send;
}

pub struct AliyunSms {
    http: reqwest::Client,
    base_url: String,
    sign_name: String,
    access_key_id: String,
    access_key_secret: SecretString,
    /// `host[:port]` as sent, which the signature covers.
    host: String,
    throttle: Throttle,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct QueryResponse {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    total_count: serde_json::Value,
    #[serde(default, rename = "SmsSendDetailDTOs")]
    details: Option<QueryDetails>,
}

#[derive(Deserialize, Default)]
struct QueryDetails {
    #[serde(default, rename = "SmsSendDetailDTO")]
    items: Vec<QueryDetail>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct QueryDetail {
    #[serde(default)]
    out_id: String,
    #[serde(default)]
    send_status: i64,
    #[serde(default)]
    err_code: String,
}

/// Details per page of `QuerySendDetails` (the vendor's maximum).
const QUERY_PAGE: usize = 50;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SendSmsResponse {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    biz_id: String,
}

impl AliyunSms {
    pub fn new(config: &DispatchConfig) -> Result<Self, String> {
        renewal_platform::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(config.vendor_timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let url =
            reqwest::Url::parse(&config.vendor_url).map_err(|e| format!("SMS_VENDOR_URL: {e}"))?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err("SMS_VENDOR_URL has no host".into()),
        };
        Ok(AliyunSms {
            host,
            throttle: Throttle::per_second(config.vendor_qps),
            http,
            base_url: config.vendor_url.trim_end_matches('/').to_owned(),
            sign_name: config.sign_name.clone(),
            access_key_id: config.access_key_id.clone(),
            access_key_secret: config.access_key_secret.clone(),
        })
    }
}

/// Error codes after which a retry cannot succeed.
fn is_permanent(code: &str) -> bool {
    matches!(
        code,
        "isv.MOBILE_NUMBER_ILLEGAL"
            | "isv.SMS_TEMPLATE_ILLEGAL"
            | "isv.SMS_SIGNATURE_ILLEGAL"
            | "isv.TEMPLATE_MISSING_PARAMETERS"
            | "isv.INVALID_PARAMETERS"
            | "isv.BLACK_KEY_CONTROL_LIMIT"
            | "isv.AMOUNT_NOT_ENOUGH"
            | "isv.PARAM_LENGTH_LIMIT"
            | "isv.DENY_IP_RANGE"
    )
}

impl AliyunSms {
    /// Signs and posts one RPC call; the answer's status and body.
    async fn call(
        &self,
        action: &str,
        params: &[(&str, &str)],
    ) -> Result<(reqwest::StatusCode, bytes::Bytes), VendorError> {
        let query = signing::canonical_query(params);
        let date = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let signed = signing::Request {
            method: "POST",
            host: &self.host,
            path: "/",
            query: &query,
            action,
            version: VERSION,
            date: &date,
            nonce: &nonce,
            body: b"",
        };
        let authorization = signing::authorization(
            &signed,
            &self.access_key_id,
            self.access_key_secret.expose_secret(),
        );
        let response = self
            .http
            .post(format!("{}/?{query}", self.base_url))
            .header("x-acs-action", action)
            .header("x-acs-version", VERSION)
            .header("x-acs-date", date)
            .header("x-acs-signature-nonce", nonce)
            .header("x-acs-content-sha256", signing::sha256_hex(b""))
            .header("authorization", authorization)
            .send()
            .await
            .map_err(|e| {
                // No connection: the request never left. Anything later may have.
                let connect = e.is_connect();
                let reason = e.without_url().to_string();
                if connect {
                    VendorError::Unavailable(reason)
                } else {
                    VendorError::InDoubt(reason)
                }
            })?;
        let status = response.status();
        match status.as_u16() {
            // Refused before it was taken.
            429 | 503 => return Err(VendorError::Unavailable(format!("HTTP {status}"))),
            // A gateway or the service failed somewhere after taking the request.
            500..=599 => return Err(VendorError::InDoubt(format!("HTTP {status}"))),
            _ => {}
        }
        let body = response.bytes().await.map_err(|e| {
            VendorError::InDoubt(format!(
                "HTTP {status}, answer cut off: {}",
                e.without_url()
            ))
        })?;
        Ok((status, body))
    }
}

impl SmsVendor for AliyunSms {
    async fn pace(&self) {
        self.throttle.wait().await;
    }

    async fn send(&self, request: SmsRequest<'_>) -> Result<Accepted, VendorError> {
        let params = request.template_params.to_string();
        let (status, body) = self
            .call(
                ACTION,
                &[
                    ("PhoneNumbers", request.mobile),
                    ("SignName", self.sign_name.as_str()),
                    ("TemplateCode", request.template_code),
                    ("TemplateParam", params.as_str()),
                    ("OutId", request.out_id),
                ],
            )
            .await?;
        let body: SendSmsResponse = serde_json::from_slice(&body)
            .map_err(|e| VendorError::InDoubt(format!("HTTP {status}, unreadable answer: {e}")))?;
        if body.code == "OK" {
            Ok(Accepted {
                vendor_message_id: body.biz_id,
            })
        } else if is_permanent(&body.code)
            || (status.is_client_error() && !body.code.contains("LIMIT"))
        {
            Err(VendorError::Permanent {
                code: body.code,
                message: body.message,
            })
        } else {
            // Throttled or busy (`isv.BUSINESS_LIMIT_CONTROL`, `isp.SYSTEM_ERROR`): an
            // answer that says the message was not taken.
            Err(VendorError::Unavailable(format!(
                "{}: {}",
                body.code, body.message
            )))
        }
    }

    async fn query(
        &self,
        mobile: &str,
        out_id: &str,
        day: chrono::NaiveDate,
    ) -> Result<Option<Found>, VendorError> {
        let date = day.format("%Y%m%d").to_string();
        let size = QUERY_PAGE.to_string();
        for page in 1..=20_usize {
            let page_no = page.to_string();
            self.throttle.wait().await;
            let (status, body) = self
                .call(
                    QUERY_ACTION,
                    &[
                        ("PhoneNumber", mobile),
                        ("SendDate", date.as_str()),
                        ("PageSize", size.as_str()),
                        ("CurrentPage", page_no.as_str()),
                    ],
                )
                .await
                .map_err(|e| match e {
                    VendorError::InDoubt(reason) => VendorError::Unavailable(reason),
                    other => other,
                })?;
            let body: QueryResponse = serde_json::from_slice(&body).map_err(|e| {
                VendorError::Unavailable(format!("HTTP {status}, unreadable answer: {e}"))
            })?;
            if body.code != "OK" {
                return Err(VendorError::Unavailable(format!(
                    "{}: {}",
                    body.code, body.message
                )));
            }
            let items = body.details.unwrap_or_default().items;
            if let Some(found) = items.iter().find(|d| d.out_id == out_id) {
                return Ok(Some(Found {
                    status: found.send_status,
                    err_code: found.err_code.clone(),
                }));
            }
            let total = match &body.total_count {
                serde_json::Value::Number(n) => n.as_u64().unwrap_or(0) as usize,
                serde_json::Value::String(s) => s.parse().unwrap_or(0),
                _ => 0,
            };
            if items.len() < QUERY_PAGE || page * QUERY_PAGE >= total {
                return Ok(None);
            }
        }
        Err(VendorError::Unavailable(format!(
            "more than {} messages to one number on {date}",
            20 * QUERY_PAGE
        )))
    }
}
