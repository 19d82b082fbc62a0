//! JetStream wiring: the connection, the streams (one per subject namespace) and the
//! durable pull consumers, all declared in code.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, stream};
use renewal_contract::{Stream, Subjects};
use tokio_util::sync::CancellationToken;

use crate::retry::Backoff;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("nats connect: {0}")]
    Connect(String),
    #[error("jetstream stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("jetstream consumer {consumer} on {stream}: {reason}")]
    Consumer {
        stream: String,
        consumer: String,
        reason: String,
    },
    #[error("publish to {subject}: {reason}")]
    Publish { subject: String, reason: String },
    #[error("stopped before NATS answered")]
    Cancelled,
}

/// A durable pull consumer: named after the consuming service, so every replica of
/// that service shares the work.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerSpec {
    pub stream: Stream,
    pub durable: &'static str,
    /// Subject filter without prefix, e.g. `lists.case.>`.
    pub filter: &'static str,
    /// How many messages are handled at once: 1 keeps the stream's order; more only
    /// for messages whose order does not matter (each in its own transaction).
    pub parallel: usize,
}

#[derive(Clone, Debug)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    replicas: usize,
}

/// How long a consumer waits for an ack before redelivering.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

impl Bus {
    /// Connects, retrying with backoff (and logging why) until NATS answers or the
    /// token is cancelled.
    pub async fn connect(
        url: &str,
        subjects: Subjects,
        replicas: usize,
        name: &str,
        cancel: &CancellationToken,
    ) -> Result<Bus, BusError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let options = async_nats::ConnectOptions::new()
                .name(name)
                .connection_timeout(Duration::from_secs(5));
            match options.connect(url).await {
                Ok(client) => {
                    let js = jetstream::new(client.clone());
                    return Ok(Bus {
                        client,
                        js,
                        subjects,
                        replicas,
                    });
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "nats is not reachable yet");
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(BusError::Cancelled),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Declares (or finds) the stream for a namespace.
    pub async fn ensure_stream(&self, stream: Stream) -> Result<stream::Stream, BusError> {
        let name = self.subjects.stream(stream);
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![self.subjects.stream_filter(stream)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(30 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            num_replicas: self.replicas,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| BusError::Stream {
                stream: name,
                reason: e.to_string(),
            })
    }

    pub async fn ensure_all_streams(&self) -> Result<(), BusError> {
        for stream in Stream::ALL {
            self.ensure_stream(stream).await?;
        }
        Ok(())
    }

    /// Declares (or finds) a durable pull consumer.
    pub async fn pull_consumer(&self, spec: ConsumerSpec) -> Result<PullConsumer, BusError> {
        let stream = self.ensure_stream(spec.stream).await?;
        let config = jetstream::consumer::pull::Config {
            durable_name: Some(spec.durable.to_owned()),
            filter_subject: self.subjects.subject(spec.filter),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            // Never give up on a message: a malformed one is terminated explicitly and
            // kept in the inbox; anything else is retried with backoff.
            max_deliver: -1,
            max_ack_pending: 1000,
            ..Default::default()
        };
        stream
            .get_or_create_consumer(spec.durable, config)
            .await
            .map_err(|e| BusError::Consumer {
                stream: self.subjects.stream(spec.stream),
                consumer: spec.durable.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Publishes and waits for the stream's acknowledgement. `message_id` becomes
    /// `Nats-Msg-Id`, so a republish inside the duplicate window is dropped by the
    /// server (the consumer's inbox is still the guarantee).
    pub async fn publish(
        &self,
        subject_name: &str,
        message_id: &str,
        traceparent: Option<&str>,
        payload: Vec<u8>,
    ) -> Result<(), BusError> {
        let ack = self
            .send(subject_name, message_id, traceparent, payload)
            .await?;
        ack.await.map_err(|e| BusError::Publish {
            subject: subject_name.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(())
    }

    /// Sends without waiting for the acknowledgement; await the returned future.
    pub async fn send(
        &self,
        subject_name: &str,
        message_id: &str,
        traceparent: Option<&str>,
        payload: Vec<u8>,
    ) -> Result<jetstream::context::PublishAckFuture, BusError> {
        let mut message = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(message_id);
        if let Some(tp) = traceparent {
            message = message.header("traceparent", tp);
        }
        self.js
            .send_publish(self.subjects.subject(subject_name), message)
            .await
            .map_err(|e| BusError::Publish {
                subject: subject_name.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Deletes this deployment's streams (tests and the demo's reset use it).
    pub async fn delete_streams(&self) {
        for stream in Stream::ALL {
            let _ = self.js.delete_stream(self.subjects.stream(stream)).await;
        }
    }
}
