//! The running parts of one service (its consumers, its own loops and its outbox
//! relay) started together, and stopped together when the token fires: each finishes
//! the work in hand first. If one part fails, the others are stopped.

use std::future::Future;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::ConsumerSpec;
use crate::inbox::{Consuming, Handler, consume};
use crate::{Deps, Outbox};

pub struct Service {
    name: &'static str,
    deps: Deps,
    consuming: Consuming,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
}

impl Service {
    pub fn new(
        name: &'static str,
        deps: &Deps,
        outbox: &Outbox,
        cancel: &CancellationToken,
    ) -> Self {
        Service {
            name,
            deps: deps.clone(),
            consuming: Consuming {
                pool: deps.pool.clone(),
                bus: deps.bus.clone(),
                schema: outbox.schema(),
                outbox: outbox.clone(),
            },
            cancel: cancel.clone(),
            tasks: JoinSet::new(),
        }
    }

    /// Handles a durable consumer's messages, each in a transaction with the inbox.
    pub fn consume<H: Handler>(&mut self, spec: ConsumerSpec, handler: H) {
        self.tasks.spawn(consume(
            self.consuming.clone(),
            spec,
            handler,
            self.cancel.clone(),
        ));
    }

    /// Runs one of the service's own loops; it must return once the token fires.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Starts the outbox relay and waits until every part has stopped.
    pub async fn run(mut self) -> Result<(), String> {
        let outbox = self.consuming.outbox.clone();
        self.tasks.spawn(outbox.relay(
            self.deps.pool.clone(),
            self.deps.bus.clone(),
            self.cancel.clone(),
        ));
        let mut result = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            if let Err(e) = done {
                self.cancel.cancel();
                result = Err(format!("{} task failed: {e}", self.name));
            }
        }
        result
    }
}
