//! Leases: who executes a run right now, and the fencing token that makes a stale worker's
//! writes fail.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A held lease on a run. Every write for the run carries `token`; the store refuses a write
/// whose token is no longer the run's current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub run_id: String,
    pub owner: String,
    pub token: i64,
}

/// What a worker asks for when it takes a run.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub owner: String,
    pub ttl: Duration,
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// This machine's host name: `RESUMEFLOW_HOST_ID` if set (several "hosts" on one machine,
/// or a stable id where host names repeat), else from `/proc`, `HOSTNAME`, or `localhost`.
pub fn hostname() -> String {
    if let Some(id) = std::env::var("RESUMEFLOW_HOST_ID")
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        return id.trim().to_string();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// A fresh owner id: `host:pid:random`. Each engine instance has its own.
///
/// ```
/// let owner = resumeflow_core::lease::new_owner_id();
/// assert_eq!(owner.split(':').count(), 3);
/// ```
pub fn new_owner_id() -> String {
    format!(
        "{}:{}:{:08x}",
        hostname().replace(':', "_"),
        std::process::id(),
        fastrand::u32(..)
    )
}

/// True when `owner` names a process on this host that no longer exists.
/// Owners on other hosts are never presumed dead (their lease has to expire).
pub fn owner_is_dead(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (Some(_suffix), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if host != hostname().replace(':', "_") {
        return false;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if pid == std::process::id() {
        return false;
    }
    !process_alive(pid)
}

fn process_alive(pid: u32) -> bool {
    let proc_dir = std::path::Path::new("/proc");
    if !proc_dir.exists() {
        return true; // no way to tell: wait for expiry instead
    }
    // A zombie (killed, not yet reaped) is gone for our purposes.
    match std::fs::read_to_string(proc_dir.join(pid.to_string()).join("stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_missing_pid_is_dead() {
        let me = new_owner_id();
        assert!(!owner_is_dead(&me));
        let host = hostname().replace(':', "_");
        assert!(owner_is_dead(&format!("{host}:4194999:abcd")));
        assert!(!owner_is_dead("other-host:1:abcd"));
        assert!(!owner_is_dead("garbage"));
    }
}
