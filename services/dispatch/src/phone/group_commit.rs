//! Group commit: requests arriving together are written by one statement. Each
//! request queues with a channel for its answer; whoever holds one of the writer
//! permits takes what has queued (up to a batch's size) and writes it, by a task of
//! its own so a caller hanging up mid-write cannot cut the batch short for the others.
//! While a batch is written the next ones queue, so under load each statement carries
//! many requests and each commit waits for one flush of the WAL; alone, a request is
//! written at once. Leases and completions both go through one (`leases`,
//! `outcomes`). Written here because the pattern is a dozen lines around a tokio
//! semaphore and no kept crate offers it for an async writer.

use std::future::Future;

use tokio::sync::{Semaphore, oneshot};

/// A request waiting in a batch, and where its answer goes.
pub type Waiting<T, R> = (T, oneshot::Sender<R>);

pub struct GroupCommit<T, R> {
    queue: std::sync::Mutex<Vec<Waiting<T, R>>>,
    /// Held by whoever is writing: one batch is written while the next is committed.
    writing: Semaphore,
    per_batch: usize,
}

impl<T: Send + 'static, R: Send + 'static> GroupCommit<T, R> {
    /// `writers` batches written at once, at most `per_batch` requests each.
    pub fn new(writers: usize, per_batch: usize) -> Self {
        GroupCommit {
            queue: Default::default(),
            writing: Semaphore::new(writers.max(1)),
            per_batch: per_batch.max(1),
        }
    }

    /// Queues `request` and returns its answer once the batch holding it is written;
    /// `None` if the batch's writer ended without answering it (it panicked).
    pub async fn submit<W, F>(&self, request: T, write: W) -> Option<R>
    where
        W: Fn(Vec<Waiting<T, R>>) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let (answer, mut answered) = oneshot::channel();
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((request, answer));
        loop {
            // Waits while enough batches are being written (the semaphore is fair: first
            // come, first served). A batch written meanwhile may have held this one.
            let Ok(_writer) = self.writing.acquire().await else {
                break;
            };
            match answered.try_recv() {
                Ok(written) => return Some(written),
                Err(oneshot::error::TryRecvError::Closed) => return None,
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
            let batch: Vec<_> = {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                let n = queue.len().min(self.per_batch);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                // Taken by a write still running for a caller who hung up.
                break;
            }
            if let Err(e) = tokio::spawn(write(batch)).await {
                tracing::error!(error = %e, "writing a batch failed");
            }
            if let Ok(written) = answered.try_recv() {
                return Some(written);
            }
        }
        answered.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::GroupCommit;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_arriving_together_share_a_write_and_each_gets_its_own_answer() {
        let group = Arc::new(GroupCommit::<u32, u32>::new(1, 100));
        let writes = Arc::new(AtomicUsize::new(0));
        let mut callers = tokio::task::JoinSet::new();
        for n in 0..50_u32 {
            let (group, writes) = (group.clone(), writes.clone());
            callers.spawn(async move {
                let answer = group
                    .submit(n, |batch| {
                        let writes = writes.clone();
                        async move {
                            writes.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                            for (n, answer) in batch {
                                let _ = answer.send(n * 2);
                            }
                        }
                    })
                    .await;
                (n, answer)
            });
        }
        while let Some(done) = callers.join_next().await {
            let (n, answer) = done.expect("caller");
            assert_eq!(answer, Some(n * 2));
        }
        let writes = writes.load(Ordering::SeqCst);
        assert!(writes < 50, "50 requests took {writes} writes");
    }

    #[tokio::test]
    async fn a_writer_that_drops_its_answers_leaves_none() {
        let group = GroupCommit::<u32, u32>::new(2, 10);
        let answer = group.submit(1, |batch| async move { drop(batch) }).await;
        assert_eq!(answer, None);
    }
}
