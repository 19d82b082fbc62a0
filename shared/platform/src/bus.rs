//! JetStream wiring: the connection, the streams (one per subject namespace) and the
//! durable pull consumers, all declared in code.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, stream};
use renewal_contract::{Stream, Subjects};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::retry::Backoff;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("nats connect: {0}")]
    Connect(String),
    /// The server did not take the connection: unreachable, TLS refused (an unknown
    /// CA, a server without TLS) or the credential refused.
    #[error("nats at {url} refused the connection: {source}")]
    Refused {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
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

/// How a process connects to NATS: in plain text without a user (a laptop's loopback
/// server, the default), or over TLS verifying the server against a CA (`NATS_CA`),
/// as a user with a password (`NATS_USER`, `NATS_PASSWORD`) whose rights are its
/// service's rows of the contract (`renewal nats-config`).
#[derive(Debug, Clone, Default)]
pub struct NatsAccess {
    /// PEM file of the CA the server's certificate must chain to; TLS is required
    /// when set.
    pub ca: Option<PathBuf>,
    pub user: Option<NatsUser>,
}

#[derive(Debug, Clone)]
pub struct NatsUser {
    pub name: String,
    pub password: SecretString,
}

impl NatsAccess {
    /// The client options for a connection named `name`.
    pub fn options(&self, name: &str) -> async_nats::ConnectOptions {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5));
        if let Some(ca) = &self.ca {
            crate::install_crypto_provider();
            options = options.require_tls(true).add_root_certificates(ca.clone());
        }
        if let Some(user) = &self.user {
            // Replies (and pulled messages) arrive under the user's own inbox prefix,
            // the only subjects it may subscribe to.
            options = options
                .user_and_password(user.name.clone(), user.password.expose_secret().to_owned())
                .custom_inbox_prefix(renewal_contract::permissions::inbox_prefix(&user.name));
        }
        options
    }
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
    /// How many messages that are ready at once share one transaction (with their
    /// inbox rows), in the stream's order, acknowledged after its commit: for busy
    /// streams whose every message is a small write (one commit each would cost more
    /// than the write). 1: a transaction per message. Only with `parallel: 1`.
    pub batch: usize,
}

#[derive(Clone, Debug)]
pub struct Bus {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    replicas: usize,
    max_bytes: i64,
}

/// The most bytes a service's stream keeps by default (`NATS_STREAM_MAX_BYTES`): five
/// streams fit a 20 GiB JetStream volume (deploy/k8s/nats/values.yaml).
pub const STREAM_MAX_BYTES: i64 = 3 << 30;
/// The bound of a bus not told otherwise (the simulation, the tests): JetStream
/// reserves a stream's bound on its volume, and tests run many deployments at once.
pub const SMALL_STREAM_MAX_BYTES: i64 = 256 << 20;

/// How long a consumer waits for an ack before redelivering.
pub const ACK_WAIT: Duration = Duration::from_secs(30);

/// One attempt to connect (no retry): the client, or why the server refused it.
pub async fn connect_once(
    url: &str,
    access: &NatsAccess,
    name: &str,
) -> Result<async_nats::Client, BusError> {
    let servers = url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BusError::Connect(format!("{url:?}: {e}")))?;
    access
        .options(name)
        .connect(servers.as_slice())
        .await
        .map_err(|source| BusError::Refused {
            url: url.to_owned(),
            source,
        })
}

impl Bus {
    /// Connects, retrying with backoff (and logging why) until NATS answers or the
    /// token is cancelled. `url` may list the servers of a cluster, comma-separated;
    /// the client moves to another when the one it is on goes.
    pub async fn connect(
        url: &str,
        subjects: Subjects,
        replicas: usize,
        name: &str,
        cancel: &CancellationToken,
    ) -> Result<Bus, BusError> {
        Self::connect_with(
            url,
            &NatsAccess::default(),
            subjects,
            replicas,
            name,
            cancel,
        )
        .await
    }

    /// [`Bus::connect`] with TLS and a credential (`NATS_CA`, `NATS_USER`,
    /// `NATS_PASSWORD`): a refused credential or certificate is retried too (logged
    /// with the reason), as a secret being rolled out may arrive after the process.
    pub async fn connect_with(
        url: &str,
        access: &NatsAccess,
        subjects: Subjects,
        replicas: usize,
        name: &str,
        cancel: &CancellationToken,
    ) -> Result<Bus, BusError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match connect_once(url, access, name).await {
                Ok(client) => {
                    let js = jetstream::new(client.clone());
                    return Ok(Bus {
                        client,
                        js,
                        subjects,
                        replicas,
                        max_bytes: SMALL_STREAM_MAX_BYTES,
                    });
                }
                Err(e @ BusError::Connect(_)) => return Err(e),
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

    /// Bounds every stream this bus declares to `bytes`.
    pub fn with_stream_max_bytes(mut self, bytes: i64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Declares (or finds) the stream for a namespace. A stream is bounded in age and
    /// bytes; a full one refuses new messages (the outboxes keep them, an alert fires
    /// before) rather than drop old ones nobody has read. A stream declared before its
    /// bound was set, or with another, is given this one.
    pub async fn ensure_stream(&self, stream: Stream) -> Result<stream::Stream, BusError> {
        let name = self.subjects.stream(stream);
        let failed = |e: &dyn std::fmt::Display| BusError::Stream {
            stream: name.clone(),
            reason: e.to_string(),
        };
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![self.subjects.stream_filter(stream)],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: crate::retention::STREAM_MAX_AGE,
            max_bytes: self.max_bytes,
            discard: stream::DiscardPolicy::New,
            duplicate_window: Duration::from_secs(120),
            num_replicas: self.replicas,
            ..Default::default()
        };
        let mut found = self
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| failed(&e))?;
        let current = found.info().await.map_err(|e| failed(&e))?.config.clone();
        if current.max_bytes != self.max_bytes || current.discard != stream::DiscardPolicy::New {
            let bounded = stream::Config {
                max_bytes: self.max_bytes,
                discard: stream::DiscardPolicy::New,
                ..current
            };
            self.js
                .update_stream(bounded)
                .await
                .map_err(|e| failed(&e))?;
            tracing::info!(stream = %name, max_bytes = self.max_bytes, "stream bounded");
        }
        Ok(found)
    }

    /// Reports how full each stream is (`stream_fill_ratio`), for the alert that fires
    /// before one refuses messages.
    pub async fn report_fill(&self) {
        for stream in Stream::ALL {
            let name = self.subjects.stream(stream);
            let Ok(mut found) = self.js.get_stream(&name).await else {
                continue;
            };
            if let Ok(info) = found.info().await
                && info.config.max_bytes > 0
            {
                let ratio = info.state.bytes as f64 / info.config.max_bytes as f64;
                metrics::gauge!("stream_fill_ratio", "stream" => stream.namespace()).set(ratio);
            }
        }
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
