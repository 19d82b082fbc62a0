//! The vendor's webhook faces outsiders: wrong token, malformed or oversized bodies are
//! refused with nothing written; repeated and late receipts change nothing; a receipt
//! for a message we do not know is kept for reconciliation.

use renewal_e2e::{TestSystem, local, policy};
use serde_json::json;

async fn post(url: &str, body: impl Into<reqwest::Body>) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("HTTP answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

async fn receipts(system: &TestSystem) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM dispatch.sms_receipts")
        .fetch_one(system.sim.pool())
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_refuses_strangers_and_bad_bodies_and_keeps_receipts_idempotent() {
    let system = TestSystem::start("wh", local("2026-12-01", 0)).await;
    let sim = &system.sim;
    sim.publish_policies(&[policy("P2026W0001", "2027-02-15")])
        .await
        .expect("published");
    sim.advance_to(local("2026-12-17", 12))
        .await
        .expect("time moves");
    assert_eq!(receipts(&system).await, 1, "the vendor's receipt arrived");
    let (out_id, biz_id): (uuid::Uuid, String) =
        sqlx::query_as("SELECT id, vendor_message_id FROM dispatch.sms_messages")
            .fetch_one(sim.pool())
            .await
            .expect("message");
    let receipt = |success: bool, code: &str, time: &str| {
        json!([{
            "phone_number": "13812345678", "send_time": "2026-12-17 10:00:00", "report_time": time,
            "success": success, "err_code": code, "err_msg": "", "sms_size": "1",
            "biz_id": biz_id, "out_id": out_id.to_string()
        }])
        .to_string()
    };

    // A stranger without the token.
    let wrong = sim.webhook_url.replace("/sms/", "/sms/x");
    let (status, _) = post(&wrong, receipt(true, "DELIVERED", "2026-12-17 10:00:01")).await;
    assert_eq!(status, 401);
    // Malformed and oversized bodies.
    let (status, body) = post(&sim.webhook_url, "[{\"biz_id\": 12").await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = post(&sim.webhook_url, vec![b' '; 1024 * 1024 + 1]).await;
    assert_eq!(status, 413);
    assert_eq!(
        receipts(&system).await,
        1,
        "nothing written by refused requests"
    );

    // The vendor repeats the receipt it already sent: the acknowledgement it expects, no second effect.
    let (delivered_time,): (String,) =
        sqlx::query_as("SELECT report_time FROM dispatch.sms_receipts")
            .fetch_one(sim.pool())
            .await
            .expect("receipt");
    let (status, ack) = post(
        &sim.webhook_url,
        receipt(true, "DELIVERED", &delivered_time),
    )
    .await;
    assert_eq!((status, ack), (200, json!({"code": 0, "msg": "成功"})));
    assert_eq!(receipts(&system).await, 1);
    // A late, contradicting receipt is kept but a delivered message stays delivered.
    let (status, _) = post(
        &sim.webhook_url,
        receipt(false, "UNDELIV", "2026-12-17 10:05:00"),
    )
    .await;
    assert_eq!(status, 200);
    let state: String = sqlx::query_scalar("SELECT state FROM dispatch.sms_messages")
        .fetch_one(sim.pool())
        .await
        .expect("state");
    assert_eq!(state, "delivered");
    assert_eq!(receipts(&system).await, 2);
    // A receipt for a message we never sent is kept for reconciliation.
    let unknown = json!([{
        "phone_number": "13900000000", "report_time": "2026-12-17 11:00:00", "success": true,
        "err_code": "DELIVERED", "biz_id": "999^1", "out_id": "not-ours"
    }]);
    let (status, _) = post(&sim.webhook_url, unknown.to_string()).await;
    assert_eq!(status, 200);
    let unmatched: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dispatch.sms_receipts WHERE message_id IS NULL")
            .fetch_one(sim.pool())
            .await
            .expect("count");
    assert_eq!(unmatched, 1);
    sim.settle().await.expect("settles");
    // One event per change; the sender's `sent` and the webhook's `delivered` are
    // written by two transactions that can commit in either order.
    let events: Vec<String> =
        sqlx::query_scalar("SELECT subject FROM dispatch.outbox ORDER BY subject DESC")
            .fetch_all(sim.pool())
            .await
            .expect("events");
    assert_eq!(
        events,
        vec!["dispatch.sms.sent", "dispatch.sms.delivered"],
        "one event per real change"
    );
    system.finish().await;
}
