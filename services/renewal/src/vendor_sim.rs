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
//!
//! Beside the per-phone faults there is a global fault [`Mode`], for a while, that
//! every `SendSms` meets: take the message and never answer, take it and drop the
//! connection without an answer, answer 503 to everything (`QuerySendDetails` too),
//! or answer 2-5 s late. The mock also runs as its own process (`renewal vendor`,
//! [`run_process`]): its own database, receipts pushed to the first of several
//! webhooks that takes them, and, on the same loopback listener, `POST /faults` and
//! `GET /faults` to switch the global fault over HTTP and `GET /healthz`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
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

/// A failure the mock vendor plays for every `SendSms` for a while (beside the
/// per-phone [`Fault`]s, which come first). `QuerySendDetails` keeps working except
/// under `Unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Normal service.
    None,
    /// Takes every message (it reaches the customer) and never answers.
    AcceptThenHang,
    /// Takes every message, then drops the connection without an HTTP answer.
    AcceptThenReset,
    /// HTTP 503 with the vendor's error to every request; nothing is taken.
    Unavailable,
    /// Answers 2-5 s after taking each message (as [`VendorSim::answer_after`] would).
    Slow,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::AcceptThenHang => "accept_then_hang",
            Mode::AcceptThenReset => "accept_then_reset",
            Mode::Unavailable => "unavailable",
            Mode::Slow => "slow",
        }
    }
}

/// How late a vendor in [`Mode::Slow`] answers.
const SLOW_ANSWER: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(5));

/// The longest a global fault lasts (a longer one is cut to this).
const LONGEST_MODE: Duration = Duration::from_secs(366 * 86_400);

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
    /// The texts taken for the numbers a test watches, as the handset shows them (kept
    /// in memory for those only: a text names its customer).
    handsets: HashMap<String, Vec<String>>,
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
    /// The global fault and when it ends.
    mode: Arc<Mutex<(Mode, std::time::Instant)>>,
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
            mode: Arc::new(Mutex::new((Mode::None, std::time::Instant::now()))),
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

    /// Plays `mode` for every `SendSms` for `for_` (at most a year), then normal
    /// service again; `Mode::None` ends the one in force.
    pub fn set_mode(&self, mode: Mode, for_: Duration) {
        let until = std::time::Instant::now() + for_.min(LONGEST_MODE);
        *self.mode.lock().unwrap_or_else(|e| e.into_inner()) = (mode, until);
    }

    /// The global fault in force and how long it still lasts (`Mode::None` and zero
    /// when there is none).
    pub fn mode(&self) -> (Mode, Duration) {
        let (mode, until) = *self.mode.lock().unwrap_or_else(|e| e.into_inner());
        let left = until.saturating_duration_since(std::time::Instant::now());
        if mode == Mode::None || left.is_zero() {
            (Mode::None, Duration::ZERO)
        } else {
            (mode, left)
        }
    }

    fn answer_delay_for(&self, out_id: &str, mode: Mode) -> Option<Duration> {
        let configured = *self.answer_delay.lock().unwrap_or_else(|e| e.into_inner());
        let (min, max) = if mode == Mode::Slow {
            SLOW_ANSWER
        } else {
            configured?
        };
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

    /// Keeps the texts taken for `phone` from now on (see [`VendorSim::texts_for`]).
    pub fn watch(&self, phone: &str) {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.handsets.entry(phone.to_owned()).or_default();
    }

    /// The texts taken for a watched `phone`, in order, rendered from the approved
    /// template the request named with its parameters.
    pub fn texts_for(&self, phone: &str) -> Vec<String> {
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.handsets.get(phone).cloned().unwrap_or_default()
    }

    /// Keeps the text of a message taken for a watched number.
    fn keep_text(&self, phone: &str, code: &str, params: &str) {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let Some(texts) = faults.handsets.get_mut(phone) else {
            return;
        };
        let params: serde_json::Value = serde_json::from_str(params).unwrap_or_default();
        let text = renewal_dispatch::sms::templates::text_of(code)
            .map(|t| renewal_dispatch::sms::templates::render(t, &params))
            .unwrap_or_else(|| format!("[unknown template {code}]"));
        texts.push(text);
    }

    /// How many requests the vendor got for `phone`, answered or refused.
    pub fn requests_for(&self, phone: &str) -> u32 {
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        faults.requests.get(phone).copied().unwrap_or(0)
    }

    /// The fault to play for this request, if any (counting the request).
    fn fault_for(&self, phone: &str) -> Option<Fault> {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        if faults.by_phone.is_empty() && faults.handsets.is_empty() {
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
        self.start_pushing_to(listener, vec![webhook_url], cancel);
    }

    /// Serves the vendor API (and the fault switch, `/faults`) on `listener` and
    /// pushes receipts to the first of `webhooks` that takes them until `cancel`
    /// fires; the tasks it started.
    pub fn start_pushing_to(
        self,
        listener: tokio::net::TcpListener,
        webhooks: Vec<String>,
        cancel: CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        let writes = self.writes.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writes) = writes {
            tasks.push(tokio::spawn(self.clone().write(writes, cancel.clone())));
        }
        let app = Router::new()
            .route("/", post(send_sms))
            .route("/faults", get(faults_now).post(set_faults))
            .route("/healthz", get(|| async { "ok" }))
            .with_state(self.clone());
        let stop = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        }));
        tasks.push(tokio::spawn(self.push_receipts(webhooks, cancel)));
        tasks
    }

    /// Receipts accepted but not yet acknowledged by our webhook.
    pub async fn owed_receipts(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM demo.vendor_messages WHERE pushed_at IS NULL")
            .fetch_one(&self.pool)
            .await
    }

    async fn push_receipts(self, webhooks: Vec<String>, cancel: CancellationToken) {
        // Its HTTP client needs the process's TLS provider chosen.
        renewal_platform::install_crypto_provider();
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
        // The webhook that took the last batch: tried first next time.
        let mut preferred = 0;
        loop {
            if self.held.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.accepted.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }
            let pushed = self.push_batch(&http, &webhooks, &mut preferred).await;
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

    /// Pushes a batch of owed receipts to the first of `webhooks` that takes it,
    /// starting with `preferred` (updated to the one that did).
    async fn push_batch(
        &self,
        http: &reqwest::Client,
        webhooks: &[String],
        preferred: &mut usize,
    ) -> Result<usize, String> {
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
        let mut failures = Vec::new();
        let mut taken = false;
        for i in 0..webhooks.len() {
            let at = (*preferred + i) % webhooks.len();
            match self
                .push_to(http, &webhooks[at], &reports, replies.clone())
                .await
            {
                Ok(()) => {
                    *preferred = at;
                    taken = true;
                    break;
                }
                Err(e) if webhooks.len() > 1 => failures.push(format!("webhook {}: {e}", at + 1)),
                Err(e) => failures.push(e),
            }
        }
        if !taken {
            if failures.is_empty() {
                failures.push("no webhook to push to".into());
            }
            return Err(failures.join("; "));
        }
        sqlx::query("UPDATE demo.vendor_messages SET pushed_at = now() WHERE biz_id = ANY($1)")
            .bind(&ids)
            .execute(&self.pool)
            .await
            .map_err(|e| e.to_string())?;
        renewal_platform::activity::record();
        Ok(ids.len())
    }

    /// Pushes `reports`, then the opt-out `replies` they bring, to one webhook.
    async fn push_to(
        &self,
        http: &reqwest::Client,
        url: &str,
        reports: &[serde_json::Value],
        replies: Vec<(String, String)>,
    ) -> Result<(), String> {
        let response = http
            .post(url)
            .json(reports)
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
        self.push_replies(http, url, replies).await
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
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let (mode, _) = vendor.mode();
    if mode == Mode::Unavailable {
        return unavailable(&request_id).into_response();
    }
    if !signed_correctly(&headers, &q) {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                serde_json::json!({"Code": "SignatureDoesNotMatch", "Message": "the request signature does not match", "RequestId": request_id}),
            ),
        )
            .into_response();
    }
    let action = headers
        .get("x-acs-action")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let answer = if action == renewal_dispatch::sms::vendor::QUERY_ACTION {
        Ok(query_send_details(&vendor, &q, &request_id).await)
    } else {
        accept(&vendor, &headers, &q, &request_id, mode).await
    };
    match answer {
        Ok((status, body)) => (status, Json(body)).into_response(),
        Err(Reset) => reset(),
    }
}

/// The vendor's answer when it is unavailable.
fn unavailable(request_id: &str) -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(
            serde_json::json!({"Code": "ServiceUnavailable", "Message": "the service is temporarily unavailable", "RequestId": request_id}),
        ),
    )
}

/// A message was taken and its connection is to be dropped without an answer.
struct Reset;

/// A response that never reaches the caller: its body fails before a byte of it is
/// written, so hyper drops the connection with the head still unsent, and the caller
/// sees the connection closed before any answer.
fn reset() -> Response {
    let failing = futures::stream::once(async {
        Err::<Vec<u8>, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "the mock vendor drops the connection",
        ))
    });
    (StatusCode::OK, axum::body::Body::from_stream(failing)).into_response()
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

/// `SendSms`: takes the message unless a fault says otherwise; `Err(Reset)` when the
/// message was taken and the connection is to be dropped without an answer (`mode`).
async fn accept(
    vendor: &VendorSim,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    request_id: &str,
    mode: Mode,
) -> Result<(StatusCode, serde_json::Value), Reset> {
    if let Some(refused) = malformed(headers, q, request_id) {
        return Ok(refused);
    }
    let field = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let phone = field("PhoneNumbers");
    let fault = vendor.fault_for(phone);
    match &fault {
        Some(Fault::Unavailable { .. }) => {
            let (status, Json(body)) = unavailable(request_id);
            return Ok((status, body));
        }
        Some(Fault::Refuse { code }) => {
            return Ok((
                StatusCode::OK,
                serde_json::json!({"Code": code, "Message": "refused by the mock vendor", "RequestId": request_id}),
            ));
        }
        Some(Fault::Hang { .. }) => std::future::pending::<()>().await,
        Some(Fault::AcceptThenHang { .. }) | None => {}
    }
    vendor.keep_text(phone, field("TemplateCode"), field("TemplateParam"));
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
        return Ok((
            StatusCode::OK,
            serde_json::json!({"Code": "isp.SYSTEM_ERROR", "Message": "try again", "RequestId": request_id}),
        ));
    }
    renewal_platform::activity::record();
    if matches!(fault, Some(Fault::AcceptThenHang { .. })) || mode == Mode::AcceptThenHang {
        // Taken, and never answered: the caller gives up at its timeout.
        std::future::pending::<()>().await;
    }
    if mode == Mode::AcceptThenReset {
        return Err(Reset);
    }
    if let Some(delay) = vendor.answer_delay_for(field("OutId"), mode) {
        tokio::time::sleep(delay).await;
    }
    Ok((
        StatusCode::OK,
        serde_json::json!({"Code": "OK", "Message": "OK", "BizId": biz_id, "RequestId": request_id}),
    ))
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

/// `POST /faults`: the global fault to play and for how long.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SetMode {
    mode: Mode,
    #[serde(default)]
    seconds: Option<u64>,
}

/// The global fault in force and the seconds it still lasts.
fn mode_now(vendor: &VendorSim) -> Json<serde_json::Value> {
    let (mode, left) = vendor.mode();
    let seconds_left = (left.as_millis() as f64 / 1000.0 * 10.0).round() / 10.0;
    Json(serde_json::json!({"mode": mode, "seconds_left": seconds_left}))
}

/// `GET /faults`.
async fn faults_now(State(vendor): State<VendorSim>) -> Json<serde_json::Value> {
    mode_now(&vendor)
}

/// `POST /faults` with `{"mode": "slow", "seconds": 30}`: plays that fault for every
/// `SendSms` for that long (`{"mode": "none"}` ends it); the fault now in force.
async fn set_faults(State(vendor): State<VendorSim>, body: axum::body::Bytes) -> Response {
    let bad = |message: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": message})),
        )
            .into_response()
    };
    let asked: SetMode = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => {
            return bad(format!(
                "expected a JSON body like {{\"mode\": \"slow\", \"seconds\": 30}} with mode \
                 none, accept_then_hang, accept_then_reset, unavailable or slow: {e}"
            ));
        }
    };
    let seconds = match (asked.mode, asked.seconds) {
        (Mode::None, s) => s.unwrap_or(0),
        (_, Some(s)) if s > 0 => s,
        (mode, _) => {
            return bad(format!(
                "mode {} needs \"seconds\": how long it lasts (at least 1)",
                mode.as_str()
            ));
        }
    };
    vendor.set_mode(asked.mode, Duration::from_secs(seconds));
    tracing::info!(mode = asked.mode.as_str(), seconds, "mock vendor fault set");
    mode_now(&vendor).into_response()
}

/// The address `renewal vendor` listens on unless `VENDOR_ADDR` says otherwise.
pub const DEFAULT_PROCESS_ADDR: &str = "127.0.0.1:4390";

/// The settings of the mock vendor as a process (`renewal vendor`), from the
/// environment.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// `DATABASE_URL`: the vendor's own store (the `demo` schema); created if missing.
    pub database_url: secrecy::SecretString,
    /// `VENDOR_ADDR`, a loopback address (default 127.0.0.1:4390).
    pub addr: SocketAddr,
    /// `VENDOR_WEBHOOKS`: receipt webhook URLs, comma-separated; receipts go to the
    /// first that takes them.
    pub webhooks: Vec<String>,
    /// `VENDOR_SEED` (default 7): who is unreachable, who opts out.
    pub seed: u64,
    /// `VENDOR_ANSWER_MS` (`min-max` in milliseconds): answers that late.
    pub answer_after: Option<(Duration, Duration)>,
    /// `VENDOR_OPT_OUT_PCT` (default 0): customers replying with an opt-out.
    pub opt_out_pct: u64,
}

impl ProcessConfig {
    pub fn from_env<F: Fn(&str) -> Option<String>>(
        env: &renewal_platform::config::Env<F>,
    ) -> Result<Self, renewal_platform::config::ConfigError> {
        use renewal_platform::config::ConfigError;
        let invalid = |var: &str, reason: String| ConfigError::Invalid {
            var: var.to_owned(),
            reason,
        };
        let database_url = env.secret("DATABASE_URL").ok_or(ConfigError::Missing {
            var: "DATABASE_URL".into(),
        })?;
        if let Err(e) = secrecy::ExposeSecret::expose_secret(&database_url)
            .parse::<sqlx::postgres::PgConnectOptions>()
        {
            return Err(invalid("DATABASE_URL", format!("not a Postgres URL: {e}")));
        }
        let addr: SocketAddr = env.or("VENDOR_ADDR", SocketAddr::from(([127, 0, 0, 1], 4390)))?;
        if !addr.ip().is_loopback() {
            return Err(invalid(
                "VENDOR_ADDR",
                format!("{addr} is not a loopback address (the mock vendor is a test double)"),
            ));
        }
        let listed: String = env.required("VENDOR_WEBHOOKS")?;
        let mut webhooks = Vec::new();
        for url in listed.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => webhooks.push(url.to_owned()),
                Ok(_) => {
                    return Err(invalid(
                        "VENDOR_WEBHOOKS",
                        "every webhook must be an http or https URL".into(),
                    ));
                }
                Err(e) => {
                    return Err(invalid(
                        "VENDOR_WEBHOOKS",
                        format!("a webhook is not a URL: {e}"),
                    ));
                }
            }
        }
        if webhooks.is_empty() {
            return Err(ConfigError::Missing {
                var: "VENDOR_WEBHOOKS".into(),
            });
        }
        let seed = env.or("VENDOR_SEED", 7u64)?;
        let answer_after = match env.optional::<String>("VENDOR_ANSWER_MS")? {
            None => None,
            Some(range) => {
                Some(parse_ms_range(&range).map_err(|reason| invalid("VENDOR_ANSWER_MS", reason))?)
            }
        };
        let opt_out_pct = env.or("VENDOR_OPT_OUT_PCT", 0u64)?;
        if opt_out_pct > 100 {
            return Err(invalid(
                "VENDOR_OPT_OUT_PCT",
                format!("{opt_out_pct} is not a percentage (0-100)"),
            ));
        }
        Ok(ProcessConfig {
            database_url,
            addr,
            webhooks,
            seed,
            answer_after,
            opt_out_pct,
        })
    }
}

/// `2000-5000` (or `3000`, min and max alike): milliseconds.
fn parse_ms_range(range: &str) -> Result<(Duration, Duration), String> {
    let (min, max) = range.split_once('-').unwrap_or((range, range));
    let ms = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| format!("{range:?} is not a range of milliseconds like 2000-5000"))
    };
    let (min, max) = (ms(min)?, ms(max)?);
    if min > max {
        return Err(format!("{range:?}: the minimum is above the maximum"));
    }
    Ok((min, max))
}

/// `renewal vendor`: the mock vendor as its own process, configured from the
/// environment ([`ProcessConfig`]), until SIGTERM or SIGINT. Exit status 2 for a bad
/// setting, 1 when it cannot start.
pub async fn run_process() -> std::process::ExitCode {
    use std::process::ExitCode;
    let config = match ProcessConfig::from_env(&renewal_platform::config::Env::process()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("renewal vendor: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = match renewal_platform::telemetry::init("renewal-vendor", "info,sqlx=warn") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("renewal vendor: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let cancel = CancellationToken::new();
    renewal_platform::shutdown::cancel_on_signal(cancel.clone());
    let served = serve_process(config, cancel).await;
    if let Err(e) = &served {
        tracing::error!(error = %e, "the mock vendor cannot run");
    }
    telemetry.shutdown();
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Serves the mock vendor as `config` says until `cancel` fires: its database created
/// and migrated first, then the vendor API and `/faults` on `config.addr`.
pub async fn serve_process(config: ProcessConfig, cancel: CancellationToken) -> Result<(), String> {
    let setup = async {
        renewal_platform::postgres::ensure_database(&config.database_url)
            .await
            .map_err(|e| format!("cannot create the database: {e}"))?;
        let pool =
            renewal_platform::postgres::pool(&config.database_url, 8).map_err(|e| e.to_string())?;
        renewal_platform::postgres::migrate(&pool, "demo", sqlx::migrate!("./migrations"))
            .await
            .map_err(|e| e.to_string())?;
        let listener = renewal_platform::http::bind(config.addr)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
        Ok::<_, String>((pool, listener))
    };
    let (pool, listener) = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        ready = setup => ready?,
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let vendor = VendorSim::new(pool, Clock::wall(), config.seed);
    vendor.answer_after(config.answer_after);
    vendor.reply_opt_out(config.opt_out_pct);
    let stop = CancellationToken::new();
    let webhooks = config.webhooks.len();
    let tasks = vendor.start_pushing_to(listener, config.webhooks, stop.clone());
    // The webhook URLs carry the webhook's token: not logged.
    tracing::info!(addr = %addr, webhooks, seed = config.seed, "vendor serving");
    cancel.cancelled().await;
    stop.cancel();
    // A hanging answer (accept_then_hang) keeps its connection open for good: the
    // tasks get a moment to end, not more.
    let _ = tokio::time::timeout(Duration::from_secs(2), futures::future::join_all(tasks)).await;
    tracing::info!("vendor stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<ProcessConfig, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ProcessConfig::from_env(&renewal_platform::config::Env::from_fn(|k| {
            vars.get(k).cloned()
        }))
        .map_err(|e| e.to_string())
    }

    const BASE: [(&str, &str); 2] = [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/vendor"),
        (
            "VENDOR_WEBHOOKS",
            "http://127.0.0.1:1/a, http://127.0.0.1:2/b",
        ),
    ];

    #[test]
    fn the_process_is_configured_from_the_environment() {
        let c = config(&BASE).expect("defaults");
        assert_eq!(c.addr.to_string(), DEFAULT_PROCESS_ADDR);
        assert_eq!(c.webhooks, ["http://127.0.0.1:1/a", "http://127.0.0.1:2/b"]);
        assert_eq!((c.seed, c.opt_out_pct, c.answer_after), (7, 0, None));
        let c = config(&[
            BASE[0],
            BASE[1],
            ("VENDOR_ANSWER_MS", "2000-5000"),
            ("VENDOR_SEED", "11"),
            ("VENDOR_OPT_OUT_PCT", "30"),
            ("VENDOR_ADDR", "127.0.0.1:4391"),
        ])
        .expect("all set");
        assert_eq!(
            c.answer_after,
            Some((Duration::from_secs(2), Duration::from_secs(5)))
        );
        assert_eq!((c.seed, c.opt_out_pct, c.addr.port()), (11, 30, 4391));

        for (var, value) in [
            ("VENDOR_ADDR", "0.0.0.0:4390"),
            ("VENDOR_ADDR", "localhost"),
            ("VENDOR_WEBHOOKS", "not a url"),
            ("VENDOR_WEBHOOKS", "ftp://127.0.0.1/x"),
            ("VENDOR_WEBHOOKS", " , "),
            ("VENDOR_ANSWER_MS", "5000-2000"),
            ("VENDOR_ANSWER_MS", "fast"),
            ("VENDOR_OPT_OUT_PCT", "101"),
            ("VENDOR_SEED", "-1"),
            ("DATABASE_URL", "not a url"),
        ] {
            let mut vars = BASE.to_vec();
            vars.retain(|(k, _)| *k != var);
            vars.push((var, value));
            let e = config(&vars).expect_err(value);
            assert!(e.contains(var), "{var}={value:?}: {e}");
        }
        let e = config(&[BASE[1]]).expect_err("no database");
        assert!(e.contains("DATABASE_URL"), "{e}");
    }

    #[tokio::test]
    async fn a_global_fault_is_switched_over_http_and_ends_by_itself() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool");
        let vendor = VendorSim::new(pool, Clock::wall(), 7);
        renewal_platform::install_crypto_provider();
        vendor.set_mode(Mode::Unavailable, Duration::from_millis(50));
        assert_eq!(vendor.mode().0, Mode::Unavailable);
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(vendor.mode(), (Mode::None, Duration::ZERO), "it ended");

        let listener = renewal_platform::http::bind(bind_addr())
            .await
            .expect("listens");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        vendor.clone().start_pushing_to(
            listener,
            vec!["http://127.0.0.1:1/x".into()],
            stop.clone(),
        );
        let http = reqwest::Client::new();
        let post = |body: &'static str| http.post(format!("{base}/faults")).body(body).send();
        let answer = post(r#"{"mode": "slow", "seconds": 30}"#)
            .await
            .expect("answers");
        assert_eq!(answer.status(), 200);
        let body: serde_json::Value = answer.json().await.expect("JSON");
        assert_eq!(body["mode"], "slow");
        assert!(body["seconds_left"].as_f64().is_some_and(|s| s > 29.0));
        assert_eq!(vendor.mode().0, Mode::Slow);
        for bad in [
            r#"{"mode": "flaky", "seconds": 5}"#,
            r#"{"mode": "slow"}"#,
            "slow for 5 s",
        ] {
            let answer = post(bad).await.expect("answers");
            assert_eq!(answer.status(), 400, "{bad}");
            let body: serde_json::Value = answer.json().await.expect("JSON");
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
        }
        assert_eq!(vendor.mode().0, Mode::Slow, "a bad request changes nothing");
        let now: serde_json::Value = http
            .get(format!("{base}/faults"))
            .send()
            .await
            .expect("answers")
            .json()
            .await
            .expect("JSON");
        assert_eq!(now["mode"], "slow");
        let answer = post(r#"{"mode": "none"}"#).await.expect("answers");
        assert_eq!(answer.status(), 200);
        assert_eq!(vendor.mode().0, Mode::None);
        let health = http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("answers");
        assert_eq!(health.status(), 200);
        stop.cancel();
    }
}
