//! The queue of owed settlements: deferred payments whose answers went out and whose
//! settlements have not finished, in the order they were owed.
//!
//! Owns: [`Queue`] (jobs waiting, jobs taken and not finished, and the measured rate at which
//! they finish) and the `max_delay` rule [`Queue::behind`]: a payment is deferred only while
//! the queue can start it within half of `max_delay`.
//!
//! Does not own: settling a job (`payments::deferred`), the value on credit
//! (`ledger::exposure`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use crate::journal::Entry;

/// An owed settlement.
#[derive(Debug)]
pub struct Job {
    /// The payment as journaled.
    pub entry: Entry,
    /// When it entered the queue (unix ms; for the `max_delay` check).
    pub queued_ms: u64,
    /// Attempts so far that did not settle it (backoff, and the give-up point).
    pub attempts: u32,
}

/// The assumed duration of a settlement attempt before one is measured.
const FIRST_ATTEMPT_US: u64 = 1_000_000;

/// The queue, shared by the request path (which owes) and the worker (which settles).
#[derive(Debug)]
pub struct Queue {
    /// Settlements in flight at once.
    limit: usize,
    /// Mean duration of one settlement attempt, in µs (moving average; a first guess of 1 s
    /// until one is measured). With `limit` it gives the rate the queue is settled at.
    attempt_us: AtomicU64,
    jobs: Mutex<VecDeque<Job>>,
    notify: Notify,
    /// Jobs taken by the worker and not finished (settling, or waiting for a retry).
    busy: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Queue {
    /// An empty queue settling `limit` at once.
    pub fn new(limit: usize) -> Self {
        Queue {
            limit: limit.max(1),
            attempt_us: AtomicU64::new(FIRST_ATTEMPT_US),
            jobs: Mutex::default(),
            notify: Notify::new(),
            busy: AtomicUsize::new(0),
        }
    }

    /// Settlements in flight at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether a payment queued at `now_ms` might not start within half of `max_delay`
    /// (`delay_ms`): the oldest has waited that long already, or more settlements must finish
    /// before it gets a place than the measured rate finishes in that time. With a free place
    /// it starts at once, however slow the last attempts were (so a slow spell never keeps
    /// deferral off: the next attempts measure the rate again).
    pub fn behind(&self, now_ms: u64, delay_ms: u64) -> bool {
        let jobs = lock(&self.jobs);
        if jobs
            .front()
            .is_some_and(|j| now_ms.saturating_sub(j.queued_ms) >= delay_ms / 2)
        {
            return true;
        }
        let taken = jobs.len() + self.busy.load(Ordering::SeqCst);
        drop(jobs);
        let ahead = (taken + 1).saturating_sub(self.limit) as u64;
        let attempt_us = self.attempt_us.load(Ordering::Relaxed);
        let wait_us = ahead.saturating_mul(attempt_us) / self.limit as u64;
        wait_us >= delay_ms.saturating_mul(1000) / 2
    }

    /// Takes one settlement attempt's duration into the moving average (weight 1/8).
    pub fn record_attempt(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .attempt_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(old - old / 8 + sample / 8)
            });
    }

    /// Queues an owed settlement.
    pub fn push(&self, entry: Entry, now_ms: u64) {
        self.push_job(Job {
            entry,
            queued_ms: now_ms,
            attempts: 0,
        });
    }

    /// Puts a job (back) at the end of the queue.
    pub fn push_job(&self, job: Job) {
        lock(&self.jobs).push_back(job);
        self.notify.notify_one();
    }

    /// Waits for the next job; it counts as busy until [`Queue::done`].
    pub async fn next(&self) -> Job {
        loop {
            let notified = self.notify.notified();
            if let Some(j) = lock(&self.jobs).pop_front() {
                self.busy.fetch_add(1, Ordering::SeqCst);
                return j;
            }
            notified.await;
        }
    }

    /// A job taken by [`Queue::next`] is finished (or back in the queue).
    pub fn done(&self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
    }

    /// Owed settlements not finished: queued, settling, or waiting for a retry.
    pub fn owed(&self) -> usize {
        lock(&self.jobs).len() + self.busy.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_longer_than_its_measured_rate_settles_in_time_is_behind() {
        // Two places, 1 s per attempt (the first guess): 2 per second; max_delay 5 s, so a
        // payment must get a place within 2.5 s: at most 4 to finish before it, 6 queued.
        let now = 1_000_000;
        let fill = |q: &Queue, n: usize| {
            for _ in 0..n {
                assert!(!q.behind(now, 5000));
                q.push(crate::ledger::pending::tests::entry("/p"), now);
            }
            assert!(q.behind(now, 5000));
        };
        let q = Queue::new(2);
        fill(&q, 6);
        // Attempts measured at 100 ms: 20 per second, the same queue starts in time.
        for _ in 0..64 {
            q.record_attempt(Duration::from_millis(100));
        }
        assert!(!q.behind(now, 5000));
        // The oldest has waited half of max_delay: behind, whatever the rate.
        assert!(q.behind(now + 2_500, 5000));
        // Attempts that took 30 s (timeouts) with a place free: not behind, or the average
        // could never be measured again.
        let q = Queue::new(2);
        for _ in 0..64 {
            q.record_attempt(Duration::from_secs(30));
        }
        fill(&q, 2);
    }
}
