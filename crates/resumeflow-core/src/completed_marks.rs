//! Completed-node marks: one bit per node of a run, set when the node's completion commits,
//! indexed by the node's canonical rank ([`crate::Graph::canonical_rank`]). A store keeps them
//! in chunks of [`CHUNK_BITS`] beside the node rows, in the same transactions, so that a
//! resume learns which nodes completed from a few small rows instead of every node row (see
//! `docs/resuming.md`, "What a resume reads").
//!
//! The invariant (the store's `plan` keeps it, `tests/completed_marks.rs` proves it): while a
//! run's marks are valid, a node's bit is set exactly when its stored state is `completed`.
//! Anything that would break it (a node completed without its rank, a completed node reset)
//! drops the run's marks instead; the next resume then reads every node row and rebuilds them.

/// Bits per stored chunk (512 bytes).
pub const CHUNK_BITS: u32 = 4096;
const CHUNK_BYTES: usize = (CHUNK_BITS / 8) as usize;

/// A set of canonical ranks.
///
/// ```
/// use resumeflow_core::completed_marks::CompletedMarks;
/// let mut m = CompletedMarks::default();
/// m.insert(5000);
/// assert!(m.contains(5000) && !m.contains(4999));
/// let chunks: Vec<(u32, Vec<u8>)> = m.chunks().map(|(c, b)| (c, b.to_vec())).collect();
/// assert_eq!(chunks.len(), 1); // only chunk 1 has a bit
/// assert_eq!(CompletedMarks::from_chunks(chunks).unwrap(), m);
/// ```
#[derive(Debug, Clone, Default)]
pub struct CompletedMarks {
    bytes: Vec<u8>,
}

impl PartialEq for CompletedMarks {
    fn eq(&self, other: &Self) -> bool {
        fn trimmed(b: &[u8]) -> &[u8] {
            &b[..b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1)]
        }
        trimmed(&self.bytes) == trimmed(&other.bytes)
    }
}

impl Eq for CompletedMarks {}

impl CompletedMarks {
    /// True if `rank` is marked.
    pub fn contains(&self, rank: u32) -> bool {
        let (byte, bit) = locate(rank);
        self.bytes.get(byte).is_some_and(|b| b & bit != 0)
    }

    /// Marks `rank`.
    pub fn insert(&mut self, rank: u32) {
        let (byte, bit) = locate(rank);
        if self.bytes.len() <= byte {
            self.bytes.resize(byte + 1, 0);
        }
        self.bytes[byte] |= bit;
    }

    /// How many ranks are marked.
    pub fn len(&self) -> usize {
        self.bytes.iter().map(|b| b.count_ones() as usize).sum()
    }

    /// True if nothing is marked.
    pub fn is_empty(&self) -> bool {
        self.bytes.iter().all(|&b| b == 0)
    }

    /// The stored form: `(chunk, bytes)` of every chunk with a mark (chunk `c` holds ranks
    /// `c * CHUNK_BITS ..`; its bytes may be shorter than a whole chunk).
    pub fn chunks(&self) -> impl Iterator<Item = (u32, &[u8])> {
        self.bytes
            .chunks(CHUNK_BYTES)
            .enumerate()
            .filter(|(_, bytes)| bytes.iter().any(|&b| b != 0))
            .map(|(c, bytes)| (c as u32, bytes))
    }

    /// Reads the stored chunks back; an error names what is wrong with them.
    pub fn from_chunks(chunks: impl IntoIterator<Item = (u32, Vec<u8>)>) -> Result<Self, String> {
        let mut marks = Self::default();
        for (chunk, bytes) in chunks {
            if bytes.len() > CHUNK_BYTES {
                return Err(format!("chunk {chunk} holds {} bytes", bytes.len()));
            }
            let start = chunk as usize * CHUNK_BYTES;
            if marks.bytes.len() < start + bytes.len() {
                marks.bytes.resize(start + bytes.len(), 0);
            }
            for (i, b) in bytes.into_iter().enumerate() {
                marks.bytes[start + i] |= b;
            }
        }
        Ok(marks)
    }

    /// Sets `rank` in a stored chunk's bytes (growing them as needed); `rank` must fall in
    /// that chunk.
    pub fn set_in_chunk(chunk_bytes: &mut Vec<u8>, rank: u32) {
        let (byte, bit) = locate(rank % CHUNK_BITS);
        if chunk_bytes.len() <= byte {
            chunk_bytes.resize(byte + 1, 0);
        }
        chunk_bytes[byte] |= bit;
    }
}

/// The chunk that holds `rank`.
pub fn chunk_of(rank: u32) -> u32 {
    rank / CHUNK_BITS
}

fn locate(rank: u32) -> (usize, u8) {
    ((rank / 8) as usize, 1 << (rank % 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_set_in_chunk_agrees_with_insert() {
        let mut m = CompletedMarks::default();
        let mut stored: std::collections::BTreeMap<u32, Vec<u8>> = Default::default();
        for r in [0, 7, 8, 4095, 4096, 12_345, 50_000] {
            m.insert(r);
            CompletedMarks::set_in_chunk(stored.entry(chunk_of(r)).or_default(), r);
        }
        assert_eq!(m.len(), 7);
        assert_eq!(CompletedMarks::from_chunks(stored.clone()).unwrap(), m);
        let back = CompletedMarks::from_chunks(m.chunks().map(|(c, b)| (c, b.to_vec()))).unwrap();
        assert_eq!(back, m);
        assert!(!m.contains(1) && !m.contains(50_001) && !m.contains(u32::MAX));
        assert!(CompletedMarks::from_chunks([(0, vec![0; CHUNK_BYTES + 1])]).is_err());
    }
}
