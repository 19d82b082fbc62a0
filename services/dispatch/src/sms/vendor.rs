//! The SMS vendor behind a small trait, so a second vendor can be added. The first is
//! Alibaba Cloud SMS (`SendSms`, RPC style, API version 2017-05-25); its base URL is
//! configuration, so tests and the demo point it at a local mock with the same wire format.

use std::future::Future;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::DispatchConfig;
use crate::sms::signing;
use crate::sms::throttle::Throttle;

pub const ACTION: &str = "SendSms";
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

#[derive(Debug, thiserror::Error)]
pub enum VendorError {
    /// Worth retrying: timeouts, 5xx, throttling.
    #[error("vendor unavailable: {0}")]
    Transient(String),
    /// Never worth retrying: a bad number, a template not approved, ...
    #[error("vendor refused ({code}): {message}")]
    Permanent { code: String, message: String },
}

pub trait SmsVendor: Send + Sync + 'static {
    fn send(
        &self,
        request: SmsRequest<'_>,
    ) -> impl Future<Output = Result<Accepted, VendorError>> + Send;
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

impl SmsVendor for AliyunSms {
    async fn send(&self, request: SmsRequest<'_>) -> Result<Accepted, VendorError> {
        let params = request.template_params.to_string();
        let query = signing::canonical_query(&[
            ("PhoneNumbers", request.mobile),
            ("SignName", self.sign_name.as_str()),
            ("TemplateCode", request.template_code),
            ("TemplateParam", params.as_str()),
            ("OutId", request.out_id),
        ]);
        let date = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let signed = signing::Request {
            method: "POST",
            host: &self.host,
            path: "/",
            query: &query,
            action: ACTION,
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
        self.throttle.wait().await;
        let response = self
            .http
            .post(format!("{}/?{query}", self.base_url))
            .header("x-acs-action", ACTION)
            .header("x-acs-version", VERSION)
            .header("x-acs-date", date)
            .header("x-acs-signature-nonce", nonce)
            .header("x-acs-content-sha256", signing::sha256_hex(b""))
            .header("authorization", authorization)
            .send()
            .await
            .map_err(|e| VendorError::Transient(e.without_url().to_string()))?;
        let status = response.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(VendorError::Transient(format!("HTTP {status}")));
        }
        let body: SendSmsResponse = response.json().await.map_err(|e| {
            VendorError::Transient(format!(
                "HTTP {status}, unreadable body: {}",
                e.without_url()
            ))
        })?;
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
            Err(VendorError::Transient(format!(
                "{}: {}",
                body.code, body.message
            )))
        }
    }
}
