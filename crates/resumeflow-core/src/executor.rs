//! The seam through which all node work goes: [`NodeExecutor`], the task it receives and
//! the context a node uses to save its own progress.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::Result;
use crate::event::EventKind;
use crate::lease::Lease;
use crate::store::{RunBatch, Store};

/// An in-process object handed from a producer to its dependants without a decode round
/// trip (the Python layer keeps the Python object here).
pub type LiveObject = Arc<dyn Any + Send + Sync>;

/// An input value: the producer's live object (same process, same session) or stored bytes.
#[derive(Clone)]
pub enum NodeValue {
    Live(LiveObject),
    Bytes(Arc<[u8]>),
}

impl std::fmt::Debug for NodeValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Live(_) => f.write_str("NodeValue::Live(..)"),
            Self::Bytes(b) => write!(f, "NodeValue::Bytes({} B)", b.len()),
        }
    }
}

impl NodeValue {
    /// The bytes, if this value is not a live object.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Bytes(b) => Some(b),
            Self::Live(_) => None,
        }
    }
}

/// What a node produced: the encoded bytes (the truth that is stored) and optionally the
/// live object they encode.
pub struct NodeOutput {
    /// Shared, not copied, on its way to the store and to dependants.
    pub bytes: Arc<[u8]>,
    pub live: Option<LiveObject>,
    /// Store the bytes zstd-compressed (streaming nodes' chunk bundles).
    pub compress: bool,
    /// The value is already durable in a blob file ([`NodeContext::stage_file`]); `bytes`
    /// is then empty.
    pub file: Option<crate::state::ValueRef>,
}

impl NodeOutput {
    /// An output with bytes only.
    ///
    /// ```
    /// let out = resumeflow_core::NodeOutput::bytes(b"42".to_vec());
    /// assert!(out.live.is_none());
    /// ```
    pub fn bytes(bytes: impl Into<Arc<[u8]>>) -> Self {
        Self {
            bytes: bytes.into(),
            live: None,
            compress: false,
            file: None,
        }
    }
}

/// Why an attempt failed, as classified by the executor.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeFailure {
    /// Exception type and message, e.g. `ValueError: bad row 7`.
    pub error: String,
    pub retryable: bool,
    /// Peak accelerator memory during the attempt, if measured.
    pub peak_memory: Option<u64>,
    /// Adjusted inputs for the next attempt (e.g. a halved batch size), opaque bytes.
    pub next_inputs_override: Option<Vec<u8>>,
    /// How long the failed service asked to be left alone (an HTTP `Retry-After`): the next
    /// attempt waits at least this long, capped by the policy's `max_interval`.
    pub retry_after: Option<std::time::Duration>,
    /// Why the next attempt waits as it does (e.g. `HTTP 429 Retry-After: 20`), for the
    /// retry event.
    pub retry_reason: Option<String>,
}

impl NodeFailure {
    /// A failure that is retried if the policy allows.
    pub fn retryable(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            retryable: true,
            peak_memory: None,
            next_inputs_override: None,
            retry_after: None,
            retry_reason: None,
        }
    }

    /// A failure that fails the node at once.
    ///
    /// ```
    /// assert!(!resumeflow_core::NodeFailure::fatal("ValueError: x").retryable);
    /// ```
    pub fn fatal(error: impl Into<String>) -> Self {
        Self {
            retryable: false,
            ..Self::retryable(error)
        }
    }
}

/// The longest error text stored for a failed attempt; longer texts keep their head and
/// tail (where the exception type and the last frames are).
pub const MAX_ERROR_TEXT: usize = 16 * 1024;

/// `text` if it is at most [`MAX_ERROR_TEXT`] bytes, else its head and tail around a marker
/// saying how much was left out.
///
/// ```
/// use resumeflow_core::executor::{cap_error_text, MAX_ERROR_TEXT};
/// let capped = cap_error_text(format!("ValueError: {}", "x".repeat(1 << 20)));
/// assert!(capped.len() <= MAX_ERROR_TEXT + 64 && capped.starts_with("ValueError: x"));
/// assert_eq!(cap_error_text("short".into()), "short");
/// ```
pub fn cap_error_text(text: String) -> String {
    if text.len() <= MAX_ERROR_TEXT {
        return text;
    }
    let keep_head = MAX_ERROR_TEXT * 3 / 4;
    let keep_tail = MAX_ERROR_TEXT / 4;
    let mut head_end = keep_head;
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len() - keep_tail;
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    let omitted = tail_start - head_end;
    format!(
        "{} … [{omitted} bytes of the error text omitted] … {}",
        &text[..head_end],
        &text[tail_start..]
    )
}

/// What a node's code can reach while it runs: its identity and its partial state.
#[derive(Clone)]
pub struct NodeContext {
    pub run_id: String,
    pub node_id: String,
    pub attempt: u32,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) lease: Lease,
    pub(crate) lease_ttl_s: f64,
    pub(crate) cancelled: Arc<AtomicBool>,
    /// When this attempt last showed life (`monotonic_ms`): its start or its last heartbeat.
    pub(crate) last_beat: Arc<AtomicU64>,
}

/// Milliseconds on a process-wide monotonic clock.
pub(crate) fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl NodeContext {
    /// Saves this node's progress durably (fenced by the run's lease). Blocking: call it from
    /// the node's own thread, not from an async task. Refused with `StaleAttempt` (and
    /// nothing written) once this attempt timed out or its run was cancelled: only that
    /// attempt sees the error; the run and its next attempt are unaffected.
    pub fn save_partial_state(&self, state: Vec<u8>) -> Result<()> {
        self.check_current()?;
        self.store.commit(self.partial_batch(state))
    }

    /// Saves a streaming node's progress: `state` (its cursor) replaces the saved state and
    /// `segment` (the encoded items from index `first` on) is appended to the items saved
    /// earlier, in one commit, so a save costs what it adds.
    pub fn save_stream_state(&self, state: Vec<u8>, first: u64, segment: Vec<u8>) -> Result<()> {
        self.check_current()?;
        let mut batch = self.partial_batch(state);
        batch
            .partial_segments
            .push((self.node_id.clone(), first, segment));
        self.store.commit(batch)
    }

    /// The segments [`Self::save_stream_state`] saved, `(first, segment)` in order.
    pub fn load_partial_segments(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        self.store
            .load_partial_segments(&self.run_id, &self.node_id)
    }

    /// `StaleAttempt` once this attempt timed out or was cancelled.
    fn check_current(&self) -> Result<()> {
        if self.is_cancelled() {
            return Err(crate::Error::StaleAttempt {
                run_id: self.run_id.clone(),
                node: self.node_id.clone(),
                attempt: self.attempt,
            });
        }
        Ok(())
    }

    /// Writes a large output (given as segments, never joined) durably to the store's blob
    /// files, from the node's own thread; `None` if it is small enough to return as bytes.
    /// Return the reference in [`NodeOutput::file`].
    pub fn stage_file(&self, segments: &[&[u8]]) -> Result<Option<crate::state::ValueRef>> {
        self.store.stage_file(segments)
    }

    /// As [`Self::save_partial_state`], for a state given as parts whose concatenation is
    /// its encoding (a tensor's memory among them): at or above the store's blob-file
    /// threshold the parts go straight to a blob file, never joined; smaller ones are joined
    /// (one copy) and saved inline. A file left by an attempt that then fails to commit is
    /// collected like any unreferenced blob file.
    pub fn save_partial_state_parts(&self, parts: &[&[u8]]) -> Result<()> {
        self.check_current()?;
        let batch = partial_state_batch(
            self.store.as_ref(),
            &self.run_id,
            Some(self.lease.token),
            &self.node_id,
            Some(self.attempt),
            parts,
        )?;
        self.store.commit(batch)
    }

    /// Async form of [`Self::save_partial_state`].
    pub async fn save_partial_state_async(&self, state: Vec<u8>) -> Result<()> {
        self.check_current()?;
        self.store
            .submit(self.partial_batch(state))
            .await
            .unwrap_or(Err(crate::Error::Shutdown))
    }

    fn partial_batch(&self, state: Vec<u8>) -> RunBatch {
        let mut batch = RunBatch::new(&self.run_id, Some(self.lease.token));
        batch.events.push(EventKind::PartialStateSaved {
            node: self.node_id.clone(),
            size: state.len() as u64,
            attempt: Some(self.attempt),
        });
        batch.partial_states.push((self.node_id.clone(), state));
        batch
    }

    /// The progress this node saved on an earlier attempt, if any.
    pub fn load_partial_state(&self) -> Result<Option<Vec<u8>>> {
        self.store.load_partial_state(&self.run_id, &self.node_id)
    }

    /// Where the progress this node saved is (its bytes, or its blob file: read that with
    /// [`Self::read_partial_file_into`] into a buffer of the caller's).
    pub fn partial_state_ref(&self) -> Result<Option<crate::store::PartialState>> {
        self.store.partial_state_ref(&self.run_id, &self.node_id)
    }

    /// Reads a partial state's blob file into `buf` (exactly `file.size` long), checked.
    pub fn read_partial_file_into(
        &self,
        file: &crate::state::ValueRef,
        buf: &mut [u8],
    ) -> Result<()> {
        self.store.read_partial_file_into(file, buf)
    }

    /// Extends the run's lease now; fails with `LeaseLost` if another worker took the run,
    /// and with `StaleAttempt` once this attempt timed out or its run was cancelled.
    pub fn heartbeat(&self) -> Result<()> {
        self.check_current()?;
        self.last_beat.store(monotonic_ms(), Ordering::Relaxed);
        let lost = self
            .store
            .renew_leases(vec![self.lease.clone()], self.lease_ttl_s)?;
        if lost.is_empty() {
            Ok(())
        } else {
            Err(crate::Error::LeaseLost {
                run_id: self.run_id.clone(),
                token: self.lease.token,
            })
        }
    }

    /// True once the run was cancelled or this attempt timed out; long nodes may poll it.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

/// The batch that saves `parts` (whose concatenation is the encoded state) as `node`'s
/// partial state: written to a blob file first (durable before the commit that references
/// it) when the store keeps files that large, else joined and stored inline.
pub(crate) fn partial_state_batch(
    store: &dyn Store,
    run_id: &str,
    token: Option<i64>,
    node: &str,
    attempt: Option<u32>,
    parts: &[&[u8]],
) -> Result<RunBatch> {
    let mut batch = RunBatch::new(run_id, token);
    batch.events.push(EventKind::PartialStateSaved {
        node: node.to_string(),
        size: parts.iter().map(|p| p.len() as u64).sum(),
        attempt,
    });
    match store.stage_file(parts)? {
        Some(file) => batch.partial_files.push((node.to_string(), file)),
        None => batch
            .partial_states
            .push((node.to_string(), parts.concat())),
    }
    Ok(batch)
}

/// One attempt of one node.
pub struct NodeTask {
    pub node_id: String,
    pub attempt: u32,
    /// Bound parameters in binding order (run inputs missing with a default are left out).
    pub inputs: Vec<(String, NodeValue)>,
    /// Adjusted inputs recorded by an earlier failed attempt, if any.
    pub inputs_override: Option<Vec<u8>>,
    pub context: NodeContext,
}

/// The future an executor returns for one attempt.
pub type NodeFuture = Pin<Box<dyn Future<Output = Result<NodeOutput, NodeFailure>> + Send>>;

/// Runs node work. The core tests implement it with closures; the Python bindings call
/// Python callables on worker threads.
pub trait NodeExecutor: Send + Sync + 'static {
    /// Starts one attempt; the future resolves with the output or the classified failure.
    fn execute(&self, task: NodeTask) -> NodeFuture;
}

impl<F> NodeExecutor for F
where
    F: Fn(NodeTask) -> NodeFuture + Send + Sync + 'static,
{
    fn execute(&self, task: NodeTask) -> NodeFuture {
        self(task)
    }
}

/// An executor from a blocking closure, run on tokio's blocking pool.
///
/// ```
/// use resumeflow_core::{executor::blocking, NodeOutput};
/// let exec = blocking(|task| Ok(NodeOutput::bytes(task.node_id.clone().into_bytes())));
/// # let _ = exec;
/// ```
pub fn blocking<F>(f: F) -> Arc<dyn NodeExecutor>
where
    F: Fn(&NodeTask) -> Result<NodeOutput, NodeFailure> + Send + Sync + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |task: NodeTask| -> NodeFuture {
        let f = f.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&task))
                .await
                .unwrap_or_else(|e| Err(NodeFailure::fatal(format!("panic: {e}"))))
        })
    })
}
