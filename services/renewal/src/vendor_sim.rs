//! A local mock of the SMS vendor (Alibaba Cloud SMS wire format) for the demo and the
//! tests, on loopback. It accepts `SendSms`, answers with a BizId, and pushes a
//! delivery receipt for every accepted message to our webhook until the webhook
//! acknowledges it. Its messages live in the `demo` schema, so a killed process still
//! owes, and later pushes, every receipt, as a real vendor would. Accepted messages are
//! stored by one writer in batches (each request is answered once its row is
//! committed), so the mock keeps up with a sender at thousands of requests a second.
//! Tests can make it fail for a phone number: unavailable (HTTP 503) a number of times,
//! or refusing for good with a vendor error code. Receipts can be held back for a while
//! (as handsets report seconds later), then pushed as they are owed. The demo has some
//! customers answer their first delivered SMS with an opt-out (`TD`, `退订`, ...), pushed
//! as the vendor pushes replies (`SmsUp`). It answers `QuerySendDetails` from the
//! messages it took, and can play a slow vendor (answers 2-5 s after taking a message)
//! or one that takes a message and never answers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use renewal_platform::Clock;
use sqlx::{PgPool, Row};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// A failure the mock vendor plays for one phone number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// HTTP 503 for the next `times` requests, then normal service.
    Unavailable { times: u32 },
    /// Refused every time with this vendor error code (e.g. `isv.BLACK_KEY_CONTROL_LIMIT`).
    Refuse { code: String },
    /// Takes the next `times` messages (they reach the customer) and never answers, so
    /// the caller times out not knowing.
    AcceptThenHang { times: u32 },
    /// Neither takes nor answers the next `times` messages (a request lost on the way).
    Hang { times: u32 },
}

/// A message accepted, waiting for the writer to store it.
struct Pending {
    biz_id: String,
    out_id: String,
    phone: String,
    template_code: String,
    delivered: bool,
    accepted_at: chrono::DateTime<Utc>,
    /// When the request arrived, on the wall clock (the business clock may be simulated).
    received_at: chrono::DateTime<Utc>,
    stored: oneshot::Sender<Result<(), String>>,
}

#[derive(Default)]
struct Faults {
    by_phone: HashMap<String, Fault>,
    /// Requests seen per phone number (every request, failed or not).
    requests: HashMap<String, u32>,
}

#[derive(Clone)]
pub struct VendorSim {
    pool: PgPool,
    clock: Clock,
    seed: u64,
    /// Percentage of messages the handset receives.
    delivery_rate: u64,
    accepted: Arc<Notify>,
    /// Receipts wait while this is set.
    held: Arc<std::sync::atomic::AtomicBool>,
    /// Percentage of customers who reply with an opt-out to their first delivered SMS.
    opt_out_rate: Arc<std::sync::atomic::AtomicU64>,
    /// Numbers that replied already (each replies once).
    replied: Arc<Mutex<std::collections::HashSet<String>>>,
    faults: Arc<Mutex<Faults>>,
    /// Every answer to `SendSms` waits this long after the message is taken (a slow
    /// vendor: between the two bounds, fixed per message).
    answer_delay: Arc<Mutex<Option<(Duration, Duration)>>>,
    writer: mpsc::Sender<Pending>,
    writes: Arc<Mutex<Option<mpsc::Receiver<Pending>>>>,
}

/// Messages the writer stores in one statement at most.
const WRITE_BATCH: usize = 1000;

/// FNV-1a of `bytes`, seeded: the mock's picks are fixed by input and seed, so reruns
/// agree.
fn fnv(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325 ^ seed;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Whether a given phone receives its SMS.
fn delivers(phone: &str, seed: u64, rate: u64) -> bool {
    fnv(phone.as_bytes(), seed) % 100 < rate
}

fn is_mobile(phone: &str) -> bool {
    let national = phone
        .strip_prefix("+86")
        .or_else(|| phone.strip_prefix("86"))
        .unwrap_or(phone);
    national.len() == 11
        && national.starts_with('1')
        && national.bytes().all(|b| b.is_ascii_digit())
}

impl VendorSim {
    pub fn new(pool: PgPool, clock: Clock, seed: u64) -> Self {
        let (writer, writes) = mpsc::channel(4 * WRITE_BATCH);
        VendorSim {
            pool,
            clock,
            seed,
            delivery_rate: 96,
            accepted: Arc::new(Notify::new()),
            held: Default::default(),
            opt_out_rate: Default::default(),
            replied: Default::default(),
            faults: Arc::new(Mutex::new(Faults::default())),
            answer_delay: Default::default(),
            writer,
            writes: Arc::new(Mutex::new(Some(writes))),
        }
    }

    /// Plays `fault` for requests to `phone` (as sent, e.g. `+8613900000001`).
    pub fn inject(&self, phone: &str, fault: Fault) {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.by_phone.insert(phone.to_owned(), fault);
    }

    /// Answers every `SendSms` between `min` and `max` after taking the message (None:
    /// at once).
    pub fn answer_after(&self, delay: Option<(Duration, Duration)>) {
        *self.answer_delay.lock().unwrap_or_else(|e| e.into_inner()) = delay;
    }

    fn answer_delay_for(&self, out_id: &str) -> Option<Duration> {
        let (min, max) = (*self.answer_delay.lock().unwrap_or_else(|e| e.into_inner()))?;
        let spread = max.saturating_sub(min).as_millis() as u64;
        let pick = fnv(out_id.as_bytes(), self.seed) % (spread + 1);
        Some(min + Duration::from_millis(pick))
    }

    /// Whether receipts are being held back.
    pub fn receipts_held(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Holds every receipt back (true) or pushes those owed and the ones to come (false).
    pub fn hold_receipts(&self, held: bool) {
        self.held.store(held, std::sync::atomic::Ordering::SeqCst);
        if !held {
            self.accepted.notify_one();
        }
    }

    /// Has `pct` percent of customers (fixed by phone and seed) reply to their first
    /// delivered SMS with an opt-out; 0 (the default) for none.
    pub fn reply_opt_out(&self, pct: u64) {
        self.opt_out_rate
            .store(pct.min(100), std::sync::atomic::Ordering::SeqCst);
    }

    /// How many requests the vendor got for `phone`, answered or refused.
    pub fn requests_for(&self, phone: &str) -> u32 {
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.requests.get(phone).copied().unwrap_or(0)
    }

    /// The fault to play for this request, if any (counting the request).
    fn fault_for(&self, phone: &str) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        if faults.by_phone.is_empty() {
            return None;
        }
        *faults.requests.entry(phone.to_owned()).or_default() += 1;
        match faults.by_phone.get_mut(phone) {
            Some(Fault::Unavailable { times }) if *times > 0 => {
                *times -= 1;
                Some(Fault::Unavailable { times: *times })
            }
            Some(Fault::Refuse { code }) => Some(Fault::Refuse { code: code.clone() }),
            Some(Fault::AcceptThenHang { times }) if *times > 0 => {
                *times -= 1;
                Some(Fault::AcceptThenHang { times: *times })
            }
            Some(Fault::Hang { times }) if *times > 0 => {
                *times -= 1;
                Some(Fault::Hang { times: *times })
            }
            _ => None,
        }
    }

    /// Stores accepted messages in batches until every request handler is gone or
    /// `cancel` fires.
    async fn write(self, mut writes: mpsc::Receiver<Pending>, cancel: CancellationToken) {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        loop {
            let got = tokio::select! {
                _ = cancel.cancelled() => 0,
                n = writes.recv_many(&mut batch, WRITE_BATCH) => n,
            };
            if got == 0 {
                return;
            }
            let stored = self.store(&batch).await.map_err(|e| e.to_string());
            if stored.is_ok() {
                renewal_platform::activity::record();
                self.accepted.notify_one();
            }
            for p in batch.drain(..) {
                let _ = p.stored.send(stored.clone());
            }
        }
    }

    /// Stores a batch. The vendor's storage is not ours to measure: its commits do not
    /// wait for the disk (a killed process of ours loses nothing by that; only a crash
    /// of Postgres itself could).
    async fn store(&self, batch: &[Pending]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
                "INSERT INTO demo.vendor_messages (biz_id, out_id, phone, template_code, delivered, accepted_at, received_at)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bool[], $6::timestamptz[], $7::timestamptz[])",
            )
            .bind(batch.iter().map(|p| p.biz_id.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|p| p.out_id.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|p| p.phone.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|p| p.template_code.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|p| p.delivered).collect::<Vec<_>>())
            .bind(batch.iter().map(|p| p.accepted_at).collect::<Vec<_>>())
            .bind(batch.iter().map(|p| p.received_at).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Serves the vendor API on `listener` and pushes receipts to `webhook_url` until
    /// `cancel` fires.
    pub fn start(
        self,
        listener: tokio::net::TcpListener,
        webhook_url: String,
        cancel: CancellationToken,
    ) {
        let writes = self.writes.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writes) = writes {
            tokio::spawn(self.clone().write(writes, cancel.clone()));
        }
        let app = Router::new()
            .route("/", post(send_sms))
            .with_state(self.clone());
        let stop = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        tokio::spawn(self.push_receipts(webhook_url, cancel));
    }

    /// Receipts accepted but not yet acknowledged by our webhook.
    pub async fn owed_receipts(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM demo.vendor_messages WHERE pushed_at IS NULL")
            .fetch_one(&self.pool)
            .await
    }

    async fn push_receipts(self, webhook_url: String, cancel: CancellationToken) {
        let http = match reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "mock vendor cannot build its HTTP client");
                return;
            }
        };
        loop {
            if self.held.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.accepted.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            let pushed = self.push_batch(&http, &webhook_url).await;
            if let Err(e) = &pushed {
                tracing::warn!(error = %e, "mock vendor could not push receipts; retrying");
            }
            if matches!(pushed, Ok(n) if n > 0) {
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.accepted.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn push_batch(&self, http: &reqwest::Client, url: &str) -> Result<usize, String> {
        let rows = sqlx::query(
            "SELECT biz_id, out_id, phone, delivered, accepted_at FROM demo.vendor_messages
             WHERE pushed_at IS NULL ORDER BY accepted_at LIMIT 100",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut reports = Vec::with_capacity(rows.len());
        let mut ids = Vec::with_capacity(rows.len());
        let mut replies = Vec::new();
        let opt_out_rate = self.opt_out_rate.load(std::sync::atomic::Ordering::SeqCst);
        for row in &rows {
            let biz_id: String = row.try_get("biz_id").map_err(|e| e.to_string())?;
            let delivered: bool = row.try_get("delivered").map_err(|e| e.to_string())?;
            let at: chrono::DateTime<Utc> =
                row.try_get("accepted_at").map_err(|e| e.to_string())?;
            let local = at
                .with_timezone(&chrono_tz::Asia::Shanghai)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string();
            let phone: String = row.try_get("phone").map_err(|e| e.to_string())?;
            reports.push(serde_json::json!({
                "phone_number": phone.trim_start_matches("+86"),
                "send_time": local,
                "report_time": local,
                "success": delivered,
                "err_code": if delivered { "DELIVERED" } else { "MOBILE_NOT_ON_SERVICE" },
                "err_msg": if delivered { "用户接收成功" } else { "停机" },
                "sms_size": "1",
                "biz_id": biz_id,
                "out_id": row.try_get::<String, _>("out_id").map_err(|e| e.to_string())?,
            }));
            if delivered
                && opt_out_rate > 0
                && delivers(&phone, self.seed ^ OPT_OUT_SALT, opt_out_rate)
            {
                replies.push((phone.trim_start_matches("+86").to_owned(), local));
            }
            ids.push(biz_id);
        }
        let response = http
            .post(url)
            .json(&reports)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() || body.get("code").and_then(|c| c.as_i64()) != Some(0) {
            return Err(format!("webhook answered HTTP {status}"));
        }
        // The replies go before the receipts count as pushed: if they fail (or the
        // process dies), receipts and replies are pushed again, and both are kept once.
        self.push_replies(http, url, replies).await?;
        sqlx::query("UPDATE demo.vendor_messages SET pushed_at = now() WHERE biz_id = ANY($1)")
            .bind(&ids)
            .execute(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        renewal_platform::activity::record();
        Ok(ids.len())
    }
}

/// Mixed into the seed to pick who opts out, so it is not who is unreachable.
const OPT_OUT_SALT: u64 = 0x7d;

/// How customers write their opt-out: the variants the webhook must understand.
const OPT_OUT_WORDS: &[&str] = &["TD", "td", "退订", "ＴＤ", " T ", "STOP", "n"];

impl VendorSim {
    /// Pushes the opt-out replies of customers who have not replied yet, to the
    /// webhook's `up` path beside `report_url`.
    async fn push_replies(
        &self,
        http: &reqwest::Client,
        report_url: &str,
        replies: Vec<(String, String)>,
    ) -> Result<(), String> {
        let fresh: Vec<(String, String)> = {
            let mut replied = self.replied.lock().unwrap_or_else(|e| e.into_inner());
            replies
                .into_iter()
                .filter(|(phone, _)| replied.insert(phone.clone()))
                .collect()
        };
        if fresh.is_empty() {
            return Ok(());
        }
        // A repeat is the same reply (same time and sequence number), kept once.
        let body: Vec<serde_json::Value> = fresh
            .iter()
            .map(|(phone, at)| {
                let sequence = phone.bytes().map(u64::from).sum::<u64>();
                let word = OPT_OUT_WORDS[sequence as usize % OPT_OUT_WORDS.len()];
                serde_json::json!({
                    "phone_number": phone, "send_time": at, "content": word,
                    "sign_name": "", "dest_code": "", "sequence_id": sequence,
                })
            })
            .collect();
        let url = format!("{}/up", report_url.trim_end_matches("/report"));
        let pushed = async {
            let response = http
                .post(&url)
                .json(&body)
                .send()
                .await
                .map_err(|e| e.without_url().to_string())?;
            if !response.status().is_success() {
                return Err(format!(
                    "webhook answered HTTP {} to replies",
                    response.status()
                ));
            }
            Ok(())
        }
        .await;
        if pushed.is_err() {
            // Owed again with the receipts they came with.
            let mut replied = self.replied.lock().unwrap_or_else(|e| e.into_inner());
            for (phone, _) in &fresh {
                replied.remove(phone);
            }
        }
        pushed
    }
}

/// The AccessKey secret the demo and the tests sign with.
pub const ACCESS_KEY_SECRET: &str = "demo";

/// Checks the V3 signature (ACS3-HMAC-SHA256) as the vendor does.
fn signed_correctly(headers: &HeaderMap, q: &HashMap<String, String>) -> bool {
    use renewal_dispatch::sms::signing;
    let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("");
    let pairs: Vec<(&str, &str)> = q.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let query = signing::canonical_query(&pairs);
    let request = signing::Request {
        method: "POST",
        host: h("host"),
        path: "/",
        query: &query,
        action: h("x-acs-action"),
        version: h("x-acs-version"),
        date: h("x-acs-date"),
        nonce: h("x-acs-signature-nonce"),
        body: b"",
    };
    let expected = signing::signature(&request, ACCESS_KEY_SECRET);
    h("authorization")
        .rsplit_once("Signature=")
        .is_some_and(|(_, given)| given == expected)
}

async fn send_sms(
    State(vendor): State<VendorSim>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> (StatusCode, Json<serde_json::Value>) {
    let request_id = uuid::Uuid::new_v4().to_string();
    if !signed_correctly(&headers, &q) {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                serde_json::json!({"Code": "SignatureDoesNotMatch", "Message": "the request signature does not match", "RequestId": request_id}),
            ),
        );
    }
    let action = headers
        .get("x-acs-action")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (status, body) = if action == renewal_dispatch::sms::vendor::QUERY_ACTION {
        query_send_details(&vendor, &q, &request_id).await
    } else {
        accept(&vendor, &headers, &q, &request_id).await
    };
    (status, Json(body))
}

/// The vendor's answer to a `SendSms` it refuses as asked, if it does.
fn malformed(
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    request_id: &str,
) -> Option<(StatusCode, serde_json::Value)> {
    let field = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let action = headers
        .get("x-acs-action")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if action != "SendSms" {
        return Some((
            StatusCode::BAD_REQUEST,
            serde_json::json!({"Code": "InvalidAction.NotFound", "Message": "unknown action", "RequestId": request_id}),
        ));
    }
    for required in ["PhoneNumbers", "SignName", "TemplateCode"] {
        if field(required).is_empty() {
            return Some((
                StatusCode::OK,
                serde_json::json!({"Code": "isv.INVALID_PARAMETERS", "Message": format!("{required} is required"), "RequestId": request_id}),
            ));
        }
    }
    if !is_mobile(field("PhoneNumbers")) {
        return Some((
            StatusCode::OK,
            serde_json::json!({"Code": "isv.MOBILE_NUMBER_ILLEGAL", "Message": "invalid mobile", "RequestId": request_id}),
        ));
    }
    None
}

async fn accept(
    vendor: &VendorSim,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    request_id: &str,
) -> (StatusCode, serde_json::Value) {
    if let Some(refused) = malformed(headers, q, request_id) {
        return refused;
    }
    let field = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let phone = field("PhoneNumbers");
    let fault = vendor.fault_for(phone);
    match &fault {
        Some(Fault::Unavailable { .. }) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"Code": "ServiceUnavailable", "Message": "the service is temporarily unavailable", "RequestId": request_id}),
            );
        }
        Some(Fault::Refuse { code }) => {
            return (
                StatusCode::OK,
                serde_json::json!({"Code": code, "Message": "refused by the mock vendor", "RequestId": request_id}),
            );
        }
        Some(Fault::Hang { .. }) => std::future::pending::<()>().await,
        Some(Fault::AcceptThenHang { .. }) | None => {}
    }
    let now = vendor.clock.now();
    let biz_id = format!(
        "{}^{}",
        now.timestamp_millis(),
        uuid::Uuid::new_v4().simple()
    );
    let (stored, answer) = oneshot::channel();
    let pending = Pending {
        biz_id: biz_id.clone(),
        out_id: field("OutId").to_owned(),
        phone: phone.to_owned(),
        template_code: field("TemplateCode").to_owned(),
        delivered: delivers(phone, vendor.seed, vendor.delivery_rate),
        accepted_at: now,
        received_at: Utc::now(),
        stored,
    };
    let stored = match vendor.writer.send(pending).await {
        Ok(()) => answer
            .await
            .unwrap_or_else(|_| Err("the writer stopped".into())),
        Err(_) => Err("the writer stopped".into()),
    };
    if let Err(e) = stored {
        tracing::warn!(error = %e, "mock vendor could not store a message");
        return (
            StatusCode::OK,
            serde_json::json!({"Code": "isp.SYSTEM_ERROR", "Message": "try again", "RequestId": request_id}),
        );
    }
    renewal_platform::activity::record();
    if let Some(Fault::AcceptThenHang { .. }) = fault {
        // Taken, and never answered: the caller gives up at its timeout.
        std::future::pending::<()>().await;
    }
    if let Some(delay) = vendor.answer_delay_for(field("OutId")) {
        tokio::time::sleep(delay).await;
    }
    (
        StatusCode::OK,
        serde_json::json!({"Code": "OK", "Message": "OK", "BizId": biz_id, "RequestId": request_id}),
    )
}

/// `QuerySendDetails`: the messages taken for `PhoneNumber` on `SendDate` (yyyyMMdd,
/// China's calendar), a page at a time, with their `OutId` and status.
async fn query_send_details(
    vendor: &VendorSim,
    q: &HashMap<String, String>,
    request_id: &str,
) -> (StatusCode, serde_json::Value) {
    let field = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let day = chrono::NaiveDate::parse_from_str(field("SendDate"), "%Y%m%d");
    let size: i64 = field("PageSize").parse().unwrap_or(0);
    let page: i64 = field("CurrentPage").parse().unwrap_or(0);
    let (Ok(day), true, true) = (day, (1..=50).contains(&size), page >= 1) else {
        return (
            StatusCode::OK,
            serde_json::json!({"Code": "isv.INVALID_PARAMETERS", "Message": "PhoneNumber, SendDate, PageSize (1-50) and CurrentPage are required", "RequestId": request_id}),
        );
    };
    let rows = sqlx::query(
        "SELECT out_id, delivered, pushed_at IS NOT NULL AS reported, template_code, accepted_at,
                count(*) OVER () AS total
         FROM demo.vendor_messages
         WHERE phone = $1 AND (accepted_at AT TIME ZONE 'Asia/Shanghai')::date = $2
         ORDER BY accepted_at, biz_id LIMIT $3 OFFSET $4",
    )
    .bind(field("PhoneNumber"))
    .bind(day)
    .bind(size)
    .bind((page - 1) * size)
    .fetch_all(&vendor.pool)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "mock vendor could not read its messages");
            return (
                StatusCode::OK,
                serde_json::json!({"Code": "isp.SYSTEM_ERROR", "Message": "try again", "RequestId": request_id}),
            );
        }
    };
    let total: i64 = rows
        .first()
        .and_then(|r| r.try_get("total").ok())
        .unwrap_or(0);
    let details: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let delivered: bool = r.try_get("delivered").unwrap_or(false);
            let reported: bool = r.try_get("reported").unwrap_or(false);
            let status = match (reported, delivered) {
                (false, _) => 1,
                (true, false) => 2,
                (true, true) => 3,
            };
            serde_json::json!({
                "OutId": r.try_get::<String, _>("out_id").unwrap_or_default(),
                "SendStatus": status,
                "ErrCode": if status == 3 { "DELIVERED" } else { "" },
                "TemplateCode": r.try_get::<String, _>("template_code").unwrap_or_default(),
                "PhoneNum": field("PhoneNumber"),
            })
        })
        .collect();
    (
        StatusCode::OK,
        serde_json::json!({
            "Code": "OK", "Message": "OK", "RequestId": request_id,
            "TotalCount": total.to_string(),
            "SmsSendDetailDTOs": {"SmsSendDetailDTO": details},
        }),
    )
}

/// Duplicate sends the vendor saw (the same OutId accepted more than once).
pub async fn duplicate_sends(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) - count(DISTINCT out_id) FROM demo.vendor_messages")
        .fetch_one(pool)
        .await
}

/// Out ids whose receipt our webhook acknowledged.
pub async fn acknowledged_out_ids(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT out_id FROM demo.vendor_messages WHERE pushed_at IS NOT NULL",
    )
    .fetch_all(pool)
    .await
}

pub fn bind_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
