//! Engine-wide execution slots: `max_concurrency` and named resources (e.g. one GPU).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Counts what running nodes hold; nodes start only when their needs fit.
pub struct Slots {
    max_running: Option<usize>,
    capacity: BTreeMap<String, u32>,
    used: Mutex<(usize, HashMap<String, u32>)>,
    /// Woken whenever a slot is released.
    pub released: Notify,
}

impl Slots {
    pub fn new(max_running: Option<usize>, capacity: BTreeMap<String, u32>) -> Self {
        Self {
            max_running,
            capacity,
            used: Mutex::new((0, HashMap::new())),
            released: Notify::new(),
        }
    }

    /// The engine's capacity of `resource`; `None` means unlimited.
    pub fn capacity(&self, resource: &str) -> Option<u32> {
        self.capacity.get(resource).copied()
    }

    /// Takes a slot for a node with these needs, if they fit now.
    pub fn try_acquire(self: &Arc<Self>, needs: &BTreeMap<String, u32>) -> Option<SlotGuard> {
        let mut used = self.used.lock().expect("slots lock");
        if self.max_running.is_some_and(|m| used.0 >= m) {
            return None;
        }
        for (resource, &n) in needs {
            if let Some(cap) = self.capacity(resource) {
                if used.1.get(resource).copied().unwrap_or(0) + n > cap {
                    return None;
                }
            }
        }
        used.0 += 1;
        for (resource, &n) in needs {
            *used.1.entry(resource.clone()).or_default() += n;
        }
        Some(SlotGuard {
            slots: self.clone(),
            needs: needs.clone(),
        })
    }
}

/// Held while a node runs; releasing it wakes waiting schedulers.
pub struct SlotGuard {
    slots: Arc<Slots>,
    needs: BTreeMap<String, u32>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        {
            let mut used = self.slots.used.lock().expect("slots lock");
            used.0 -= 1;
            for (resource, n) in &self.needs {
                if let Some(u) = used.1.get_mut(resource) {
                    *u -= n;
                }
            }
        }
        self.slots.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_concurrency_and_resources() {
        let slots = Arc::new(Slots::new(
            Some(2),
            BTreeMap::from([("gpu".to_string(), 1)]),
        ));
        let gpu = BTreeMap::from([("gpu".to_string(), 1)]);
        let a = slots.try_acquire(&gpu).expect("first gpu slot");
        assert!(slots.try_acquire(&gpu).is_none(), "one gpu only");
        let b = slots.try_acquire(&BTreeMap::new()).expect("cpu slot");
        assert!(
            slots.try_acquire(&BTreeMap::new()).is_none(),
            "max 2 running"
        );
        drop(a);
        assert!(slots.try_acquire(&gpu).is_some());
        drop(b);
    }
}
