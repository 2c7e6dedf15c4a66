//! Group commit: the durable changes of concurrent writers applied
//! together, in one transaction and one flush, the way a database's log
//! groups the commits that wait for it.
//!
//! A writer hands its changes over and waits. One task (started when
//! changes arrive and none is running, ended when none are left) takes
//! every change waiting at that moment, applies them with one
//! `commit_many` on a blocking thread, flushes once, and answers each
//! writer: durable, or the error of its own changes. A store whose
//! transactions run side by side (`Storage::parallel_commits`) gets up to
//! that many such tasks, a new one started when changes arrive while the
//! others are applying theirs. When the batch's
//! transaction fails, each writer's changes are applied again on their
//! own, so one bad change fails only its writer.
//!
//! Writers keep their cases' locks while they wait (`Service::change`),
//! so changes to one case still land in the order they were decided. A
//! writer that goes away while waiting (a client that hung up) does not
//! take the others' answers with it: the task owns the batch.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use super::{Commit, Result, Storage, StoreError};
use crate::domain::CaseKey;

/// At most this many writers' changes go into one transaction.
const MAX_BATCH: usize = 256;

/// What the task answers a writer.
enum Answer {
    /// Applied and flushed.
    Durable,
    /// Its changes were refused (nothing of them applied).
    Failed(StoreError),
    /// Applied, but the flush failed: the writer flushes again itself, to
    /// get an error of its own or a flush that works.
    FlushFailed,
}

struct Pending {
    changes: Vec<(CaseKey, Commit)>,
    answer: oneshot::Sender<Answer>,
}

#[derive(Default)]
struct Queue {
    pending: Vec<Pending>,
    /// The tasks taking batches.
    running: usize,
    /// The tasks among them that are waiting for their batch to land.
    applying: usize,
}

/// The group commit of one store (see the module's documentation).
pub struct GroupCommit {
    store: Arc<dyn Storage>,
    queue: Mutex<Queue>,
    /// At most this many tasks.
    tasks: usize,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").finish_non_exhaustive()
    }
}

/// A task's turn. Ended early (the task panicked), it answers whatever
/// is still queued with an error by dropping it, when no other task is
/// left to take it.
struct Turn<'a> {
    queue: &'a Mutex<Queue>,
    ended: bool,
    /// Counted among the tasks applying a batch.
    applying: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.running -= 1;
        if self.applying {
            q.applying -= 1;
        }
        if q.running == 0 {
            q.pending.clear();
        }
    }
}

impl GroupCommit {
    pub fn new(store: Arc<dyn Storage>) -> Self {
        Self {
            tasks: store.parallel_commits().max(1),
            store,
            queue: Mutex::default(),
        }
    }

    /// Applies `changes` atomically and returns once they are durable,
    /// grouped with whatever other writers commit meanwhile.
    pub async fn commit(self: &Arc<Self>, changes: Vec<(CaseKey, Commit)>) -> Result<()> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.pending.push(Pending { changes, answer });
            // A task that is free takes these; otherwise another starts,
            // while there is room for one.
            let start = q.running == q.applying && q.running < self.tasks;
            if start {
                q.running += 1;
            }
            start
        };
        if start {
            tokio::spawn(Arc::clone(self).run());
        }
        match answered.await {
            Ok(Answer::Durable) => Ok(()),
            Ok(Answer::Failed(e)) => Err(e),
            Ok(Answer::FlushFailed) => self.store.flush().await,
            // The task stopped before answering: whether the changes
            // landed is unknown, so they are not reported durable.
            Err(_) => Err(StoreError::Sled(::sled::Error::ReportableBug(
                "the group commit stopped before answering".into(),
            ))),
        }
    }

    /// Takes batches until none are waiting.
    async fn run(self: Arc<Self>) {
        let mut turn = Turn {
            queue: &self.queue,
            ended: false,
            applying: false,
        };
        loop {
            let batch: Vec<Pending> = {
                let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if turn.applying {
                    q.applying -= 1;
                }
                if q.pending.is_empty() {
                    q.running -= 1;
                    turn.ended = true;
                    return;
                }
                q.applying += 1;
                turn.applying = true;
                let n = q.pending.len().min(MAX_BATCH);
                q.pending.drain(..n).collect()
            };
            let store = Arc::clone(&self.store);
            let applied = tokio::task::spawn_blocking(move || {
                let refused = apply(&batch, |changes| store.commit_many(changes));
                (batch, refused)
            })
            .await;
            // A panic while applying drops the batch: its writers hear of it.
            let Ok((batch, refused)) = applied else {
                continue;
            };
            let flushed = if refused.iter().all(Option::is_some) {
                Ok(())
            } else {
                self.store.flush().await
            };
            for (p, refusal) in batch.into_iter().zip(refused) {
                let answer = match (refusal, &flushed) {
                    (Some(e), _) => Answer::Failed(e),
                    (None, Ok(())) => Answer::Durable,
                    (None, Err(_)) => Answer::FlushFailed,
                };
                // A writer that went away does not need its answer.
                let _ = p.answer.send(answer);
            }
        }
    }
}

/// A writer's changes that write something.
fn refs(p: &Pending) -> Vec<(&CaseKey, &Commit)> {
    p.changes
        .iter()
        .filter(|(_, c)| !c.is_empty())
        .map(|(k, c)| (k, c))
        .collect()
}

/// Applies a batch with `commit_many`: in one transaction, or, when that
/// is refused, each writer's changes on their own. Returns each writer's
/// refusal (`None`: applied).
fn apply(
    batch: &[Pending],
    commit_many: impl Fn(&[(&CaseKey, &Commit)]) -> Result<()>,
) -> Vec<Option<StoreError>> {
    let all: Vec<(&CaseKey, &Commit)> = batch.iter().flat_map(refs).collect();
    match commit_many(&all) {
        Ok(()) => batch.iter().map(|_| None).collect(),
        Err(e) if batch.len() == 1 => vec![Some(e)],
        Err(_) => batch.iter().map(|p| commit_many(&refs(p)).err()).collect(),
    }
}

#[cfg(test)]
mod tests;
