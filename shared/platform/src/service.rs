//! The running parts of one service (its consumers, its own loops and its outbox
//! relay) started together, and stopped together when the token fires: each finishes
//! the work in hand first. If one part fails, the others are stopped.

use std::future::Future;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::bus::ConsumerSpec;
use crate::dead_letters::Replayers;
use crate::http::Routes;
use crate::inbox::{Consuming, Handler, Replaying, consume};
use crate::{Deps, Outbox};

pub struct Service {
    name: &'static str,
    deps: Deps,
    consuming: Consuming,
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    replayers: Replayers,
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
                max_deliveries: deps.max_deliveries,
            },
            cancel: cancel.clone(),
            tasks: JoinSet::new(),
            replayers: Replayers::default(),
        }
    }

    /// Handles a durable consumer's messages, each in a transaction with the inbox.
    pub fn consume<H: Handler>(&mut self, spec: ConsumerSpec, handler: H) {
        let handler = Arc::new(handler);
        self.replayers.add(
            spec.filter,
            Arc::new(Replaying {
                ctx: self.consuming.clone(),
                handler: handler.clone(),
            }),
        );
        self.tasks.spawn(consume(
            self.consuming.clone(),
            spec,
            handler,
            self.cancel.clone(),
        ));
    }

    /// The service's dead letters for `hq_admin`: listed, and replayed through the
    /// consumer that failed them (mount them with the service's audit).
    pub fn dead_letter_routes(&self) -> Routes {
        crate::dead_letters::routes(
            self.deps.pool.clone(),
            self.consuming.outbox.clone(),
            self.replayers.clone(),
        )
    }

    /// Runs one of the service's own loops; it must return once the token fires.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Starts the outbox relay and waits until every part has stopped.
    pub async fn run(mut self) -> Result<(), String> {
        let outbox = self.consuming.outbox.clone();
        self.tasks.spawn(crate::retention::prune(
            self.deps.pool.clone(),
            outbox.schema(),
            self.deps.retention,
            self.cancel.clone(),
        ));
        self.tasks.spawn(outbox.relay(
            self.deps.pool.clone(),
            self.deps.bus.clone(),
            self.deps.max_deliveries as i32,
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
