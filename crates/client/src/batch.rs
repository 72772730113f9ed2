//! Coalescing of concurrent requests: the group commit of rskv's request path.
//!
//! A [`Batcher`] keeps at most `max_inflight` batches running. A request that finds a free slot
//! starts a batch at once, which takes every request queued by the next scheduler pass, so a lone
//! request waits for no timer; requests that arrive while every slot is busy queue, and the next
//! slot to free takes the whole queue as one batch.
//! Under load batches therefore grow with the load, by themselves, with no timer. The server uses
//! it to put many writes in one Raft log entry, the client to send many requests in one RPC.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;

use tokio::sync::oneshot;

type RunFn<I, O> = dyn Fn(Vec<I>) -> Pin<Box<dyn Future<Output = Vec<O>> + Send>> + Send + Sync;

/// Runs queued items of type `I` in batches, answering each with its own `O`.
pub struct Batcher<I, O> {
    inner: Arc<Inner<I, O>>,
}

struct Inner<I, O> {
    state: Mutex<State<I, O>>,
    max_inflight: usize,
    max_items: usize,
    max_weight: usize,
    passes_between: usize,
    weight: fn(&I) -> usize,
    run: Box<RunFn<I, O>>,
}

struct State<I, O> {
    queue: Vec<(I, oneshot::Sender<O>)>,
    inflight: usize,
}

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Batches running at once (at least 1).
    pub max_inflight: usize,
    /// Most items in one batch.
    pub max_items: usize,
    /// Most total weight in one batch (a batch always takes at least one item).
    pub max_weight: usize,
    /// Scheduler passes (`yield_now`) between answering a batch and taking the next. The callers
    /// just answered finish their requests first, and what arrives meanwhile joins the next
    /// batch: fewer, larger batches under load, and the next one starts later. At idle a pass
    /// with nothing else to run costs about a microsecond.
    pub passes_between: usize,
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// A batcher that runs each batch with `run`, which must answer with one output per item, in
    /// order (missing outputs make [`Batcher::submit`] return `None` for those items).
    pub fn new<F, Fut>(limits: Limits, weight: fn(&I) -> usize, run: F) -> Batcher<I, O>
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        Batcher {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    queue: Vec::new(),
                    inflight: 0,
                }),
                max_inflight: limits.max_inflight.max(1),
                max_items: limits.max_items.max(1),
                max_weight: limits.max_weight,
                passes_between: limits.passes_between,
                weight,
                run: Box::new(move |items| Box::pin(run(items))),
            }),
        }
    }

    /// Queues `item` and waits for its output. `None` when the batch was lost without an answer
    /// for it (the runtime shutting down under it).
    pub async fn submit(&self, item: I) -> Option<O> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let Ok(mut state) = self.inner.state.lock() else {
                return None;
            };
            state.queue.push((item, tx));
            let free = state.inflight < self.inner.max_inflight;
            if free {
                state.inflight += 1;
            }
            free
        };
        if start {
            // A task of its own: the batch carries other callers' items, so it must not be
            // cancelled with this caller's future.
            tokio::spawn(Inner::drive(self.inner.clone()));
        }
        rx.await.ok()
    }
}

impl<I: Send + 'static, O: Send + 'static> Inner<I, O> {
    fn take(&self, state: &mut State<I, O>) -> Vec<(I, oneshot::Sender<O>)> {
        // Items whose caller gave up while they queued (a timeout) are never run: the caller has
        // already reported an unknown outcome, and nobody waits for the answer.
        state.queue.retain(|(_, tx)| !tx.is_closed());
        let mut weight = 0;
        let mut n = 0;
        for (item, _) in &state.queue {
            let w = (self.weight)(item);
            if n > 0 && (n == self.max_items || weight + w > self.max_weight) {
                break;
            }
            weight += w;
            n += 1;
        }
        let rest = state.queue.split_off(n);
        std::mem::replace(&mut state.queue, rest)
    }

    /// Runs batches of whatever is queued until the queue is empty, then frees its slot.
    ///
    /// It takes its first batch only after one pass of the scheduler, not when it is spawned:
    /// callers woken together (the many answers of the previous batch, or the ops of one Multi
    /// request submitted in one poll) queue in that pass and go in one batch. Taking at spawn
    /// time gave the first of them a batch (a Raft entry, an RPC) each until the slots were full,
    /// and the rest waited a whole round behind those.
    ///
    /// After a batch it lets [`Limits::passes_between`] scheduler passes go by before it takes
    /// the next.
    async fn drive(inner: Arc<Inner<I, O>>) {
        tokio::task::yield_now().await;
        loop {
            let batch = {
                let Ok(mut state) = inner.state.lock() else {
                    return;
                };
                let batch = inner.take(&mut state);
                if batch.is_empty() {
                    state.inflight -= 1;
                    return;
                }
                batch
            };
            let (items, senders): (Vec<I>, Vec<oneshot::Sender<O>>) = batch.into_iter().unzip();
            let outputs = (inner.run)(items).await;
            for (sender, output) in senders.into_iter().zip(outputs) {
                // A caller that gave up (timed out) no longer listens; that is fine.
                let _ = sender.send(output);
            }
            for _ in 0..inner.passes_between {
                tokio::task::yield_now().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;

    use super::*;

    fn limits(max_inflight: usize) -> Limits {
        Limits {
            max_inflight,
            max_items: 100,
            max_weight: 1000,
            passes_between: 0,
        }
    }

    /// Every batch's items, in the order the batches ran.
    type Batches = Arc<Mutex<Vec<Vec<u32>>>>;

    type Gated = (
        Arc<Batcher<u32, u32>>,
        Batches,
        tokio::sync::watch::Sender<bool>,
    );

    /// A one-slot batcher whose batches record their items, then wait for `release` before
    /// answering each item with `answer(item)`.
    fn gated(answer: fn(u32) -> u32) -> Gated {
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let b = Batcher::new(
            limits(1),
            |_: &u32| 1,
            move |items: Vec<u32>| {
                seen.lock().expect("lock").push(items.clone());
                let mut release = release_rx.clone();
                async move {
                    let _ = release.wait_for(|r| *r).await;
                    items.into_iter().map(answer).collect()
                }
            },
        );
        (Arc::new(b), batches, release_tx)
    }

    /// Yields until `done`, failing after 5 s.
    async fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::task::yield_now().await;
        }
    }

    fn queued(b: &Batcher<u32, u32>) -> usize {
        b.inner.state.lock().expect("lock").queue.len()
    }

    /// A batcher with `max_inflight` slots that records each batch's items and answers each item
    /// with `answer(item)` at once.
    fn recording(max_inflight: usize, answer: fn(u32) -> u32) -> (Batcher<u32, u32>, Batches) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = batches.clone();
        let b = Batcher::new(
            limits(max_inflight),
            |_: &u32| 1,
            move |items: Vec<u32>| {
                seen.lock().expect("lock").push(items.clone());
                async move { items.into_iter().map(answer).collect() }
            },
        );
        (b, batches)
    }

    #[tokio::test]
    async fn lone_item_should_run_at_once_in_a_batch_of_one() {
        let (b, batches) = recording(1, |i| i * 2);
        assert_eq!(b.submit(21).await, Some(42));
        assert_eq!(b.submit(5).await, Some(10));
        assert_eq!(*batches.lock().expect("lock"), vec![vec![21], vec![5]]);
    }

    #[tokio::test]
    async fn items_submitted_together_should_share_one_batch_despite_free_slots() {
        let (b, batches) = recording(4, |i| i);
        // One poll submits all ten, as a Multi request's ops are; four slots are free.
        let answers = futures::future::join_all((0..10).map(|i| b.submit(i))).await;
        assert_eq!(answers, (0..10).map(Some).collect::<Vec<_>>());
        assert_eq!(
            *batches.lock().expect("lock"),
            vec![(0..10).collect::<Vec<u32>>()]
        );
    }

    #[tokio::test]
    async fn items_queued_behind_a_running_batch_should_go_together_in_order() {
        let (b, batches, release) = gated(|i| i + 100);
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.submit(0).await }
        });
        // Wait until the first batch is running, then queue three more behind it.
        wait_until("first batch never ran", || {
            !batches.lock().expect("lock").is_empty()
        })
        .await;
        let mut rest = Vec::new();
        for i in 1..4 {
            let b = b.clone();
            rest.push(tokio::spawn(async move { b.submit(i).await }));
        }
        wait_until("items never queued", || queued(&b) == 3).await;
        release.send(true).expect("release");
        assert_eq!(first.await.expect("join"), Some(100));
        for (i, r) in rest.into_iter().enumerate() {
            assert_eq!(r.await.expect("join"), Some(101 + i as u32));
        }
        let mut batches = batches.lock().expect("lock").clone();
        batches[1].sort();
        assert_eq!(batches, vec![vec![0], vec![1, 2, 3]]);
    }

    #[test]
    fn take_should_respect_item_and_weight_limits_but_always_take_one() {
        let b: Batcher<usize, ()> = Batcher::new(
            Limits {
                max_inflight: 1,
                max_items: 3,
                max_weight: 10,
                passes_between: 0,
            },
            |w: &usize| *w,
            |items: Vec<usize>| async move { items.iter().map(|_| ()).collect() },
        );
        let mut state = State {
            queue: Vec::new(),
            inflight: 0,
        };
        let mut receivers = Vec::new();
        for w in [4, 4, 4, 1, 1, 1, 1, 50, 1] {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            state.queue.push((w, tx));
        }
        let sizes: Vec<Vec<usize>> = std::iter::from_fn(|| {
            (!state.queue.is_empty()).then(|| {
                b.inner
                    .take(&mut state)
                    .into_iter()
                    .map(|(w, _)| w)
                    .collect()
            })
        })
        .collect();
        assert_eq!(
            sizes,
            vec![vec![4, 4], vec![4, 1, 1], vec![1, 1], vec![50], vec![1]]
        );
    }

    #[tokio::test]
    async fn items_whose_caller_gave_up_should_never_run() {
        let (b, batches, release) = gated(|i| i);
        let first = tokio::spawn({
            let b = b.clone();
            async move { b.submit(1).await }
        });
        wait_until("first batch never ran", || {
            !batches.lock().expect("lock").is_empty()
        })
        .await;
        // Queued behind the first batch, then abandoned.
        let gave_up = tokio::time::timeout(std::time::Duration::from_millis(20), b.submit(2)).await;
        assert!(gave_up.is_err(), "could not have been answered yet");
        let kept = tokio::spawn({
            let b = b.clone();
            async move { b.submit(3).await }
        });
        wait_until("item 3 never queued", || queued(&b) == 2).await;
        release.send(true).expect("release");
        assert_eq!(first.await.expect("join"), Some(1));
        assert_eq!(kept.await.expect("join"), Some(3));
        assert_eq!(*batches.lock().expect("lock"), vec![vec![1], vec![3]]);
    }

    #[tokio::test]
    async fn missing_outputs_should_answer_none_and_free_the_slot() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let b = Batcher::new(
            limits(1),
            |_: &u32| 1,
            move |items: Vec<u32>| {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        Vec::new()
                    } else {
                        items
                    }
                }
            },
        );
        assert_eq!(b.submit(1).await, None);
        assert_eq!(b.submit(2).await, Some(2));
    }
}
