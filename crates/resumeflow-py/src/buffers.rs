//! Python buffers (tensor and array memory) read by Rust with the GIL released: the one place
//! in the bindings that needs `unsafe`, so that a 512 MiB tensor goes to its blob file without
//! being copied into a `bytes` object first.

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;

/// The byte buffers of `parts` (bytes, memoryviews, tensor and array memory), each checked to
/// be C-contiguous; `what` names the caller in the error.
pub fn contiguous(parts: &[Bound<'_, PyAny>], what: &str) -> PyResult<Vec<PyBuffer<u8>>> {
    let buffers = parts
        .iter()
        .map(PyBuffer::<u8>::get)
        .collect::<PyResult<Vec<_>>>()?;
    if let Some(i) = buffers.iter().position(|b| !b.is_c_contiguous()) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "{what}: part {i} is not a contiguous buffer"
        )));
    }
    Ok(buffers)
}

/// The concatenation of `segments` in one shared allocation: one copy of an encoded value
/// given as parts (msgpack header + frames), where joining them in Python and then copying
/// the `bytes` into Rust took two.
#[allow(unsafe_code)]
pub fn concat(segments: &[&[u8]]) -> std::sync::Arc<[u8]> {
    let total = segments.iter().map(|s| s.len()).sum();
    let mut joined = std::sync::Arc::<[u8]>::new_uninit_slice(total);
    let dst = std::sync::Arc::get_mut(&mut joined).expect("a new Arc is unique");
    let mut at = 0;
    for s in segments {
        // SAFETY: `dst` has `total` bytes, the sum of the segments' lengths, so
        // `at + s.len() <= total`; source and destination are distinct allocations.
        unsafe {
            std::ptr::copy_nonoverlapping(
                s.as_ptr(),
                dst.as_mut_ptr().add(at).cast::<u8>(),
                s.len(),
            );
        }
        at += s.len();
    }
    // SAFETY: every byte of the slice was written above.
    unsafe { joined.assume_init() }
}

/// Byte slices over C-contiguous buffers, valid as long as `buffers` is borrowed.
#[allow(unsafe_code)]
pub fn segments(buffers: &[PyBuffer<u8>]) -> Vec<&[u8]> {
    buffers
        .iter()
        .map(|b| {
            if b.len_bytes() == 0 {
                return &[][..];
            }
            // SAFETY: each `PyBuffer` holds a `Py_buffer` view that keeps its exporter alive
            // and its memory in place until the `PyBuffer` is dropped, which the borrow of
            // `buffers` outlives the returned slices to prevent. The caller checked that each
            // buffer is C-contiguous, so `len_bytes` bytes from `buf_ptr` are the buffer's
            // bytes. The slices are only read. Python code that mutates a tensor while the
            // node that returned it is being stored would make the stored bytes torn, exactly
            // as with any copy taken at that moment; the stored hash is of what was written.
            unsafe { std::slice::from_raw_parts(b.buf_ptr().cast::<u8>(), b.len_bytes()) }
        })
        .collect()
}
