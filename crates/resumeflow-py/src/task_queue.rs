//! The queue between the engine and the Python worker threads: attempts wait here until a
//! worker takes one.
//!
//! Idle workers sleep on one condition variable, so an attempt wakes one of them and nothing
//! else. The `Mutex<mpsc::Receiver>` this replaces had one worker asleep in `recv` holding the
//! mutex and the others asleep on the mutex: every attempt woke the receiver and then the
//! next worker in line for the mutex (two wake-ups and context switches; perf showed
//! `lock_contended` and `finish_task_switch` high on a 1,000-node chain). Polling for the
//! next attempt before sleeping was tried and measured: on 2 vCPUs it did not help (the
//! poller takes a CPU from the threads that produce the attempt).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

struct State<T> {
    items: VecDeque<T>,
    /// Workers asleep on `ready`.
    sleeping: usize,
}

/// A multi-consumer queue whose consumers sleep on one condition variable.
pub struct TaskQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    /// Workers inside [`TaskQueue::take`].
    idle: AtomicUsize,
    closed: AtomicBool,
}

impl<T> Default for TaskQueue<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                sleeping: 0,
            }),
            ready: Condvar::new(),
            idle: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }
}

impl<T> TaskQueue<T> {
    /// Queues `item`; gives it back if the queue is closed. (`push(1)`, then
    /// `take(Duration::ZERO)` is `Some(1)`: see the tests below.)
    pub fn push(&self, item: T) -> Result<(), T> {
        let mut state = self.state.lock().expect("queue lock");
        if self.closed.load(Ordering::SeqCst) {
            return Err(item);
        }
        state.items.push_back(item);
        let wake = state.sleeping > 0;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The next item, waiting up to `timeout`; None on timeout or once the queue is closed.
    pub fn take(&self, timeout: Duration) -> Option<T> {
        self.idle.fetch_add(1, Ordering::SeqCst);
        let got = self.take_inner(timeout);
        self.idle.fetch_sub(1, Ordering::SeqCst);
        got
    }

    fn take_inner(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().expect("queue lock");
        loop {
            if self.closed.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(item) = state.items.pop_front() {
                return Some(item);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            state.sleeping += 1;
            let (next, _) = self.ready.wait_timeout(state, left).expect("queue lock");
            state = next;
            state.sleeping -= 1;
        }
    }

    /// Workers inside `take` right now.
    pub fn idle(&self) -> usize {
        self.idle.load(Ordering::SeqCst)
    }

    /// True once [`TaskQueue::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Refuses new items and wakes every waiting worker (which then gets None); items still
    /// queued stay where they are, never taken.
    pub fn close(&self) {
        let _state = self.state.lock().expect("queue lock");
        self.closed.store(true, Ordering::SeqCst);
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_item_is_taken_once_by_workers_that_sleep_and_time_out() {
        let q = Arc::new(TaskQueue::default());
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let wait = Duration::from_millis(if w % 2 == 0 { 1 } else { 2000 });
                    loop {
                        match q.take(wait) {
                            Some(usize::MAX) => break,
                            Some(i) => got.push(i),
                            None => {} // a short wait timed out: wait again
                        }
                    }
                    got
                })
            })
            .collect();
        for i in 0..20_000 {
            q.push(i).unwrap();
            if i % 1000 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        for _ in 0..4 {
            q.push(usize::MAX).unwrap();
        }
        let mut all: Vec<usize> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..20_000).collect::<Vec<_>>());
    }

    #[test]
    fn close_wakes_sleepers_and_refuses_pushes() {
        let q = Arc::new(TaskQueue::<u8>::default());
        let sleeper = {
            let q = q.clone();
            std::thread::spawn(move || q.take(Duration::from_secs(30)))
        };
        while q.idle() == 0 {
            std::thread::yield_now();
        }
        let t0 = Instant::now();
        q.close();
        assert_eq!(sleeper.join().unwrap(), None);
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "woken, not timed out"
        );
        assert_eq!(q.push(1), Err(1));
        assert!(q.is_closed());
    }
}
