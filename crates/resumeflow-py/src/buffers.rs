//! Python buffers (tensor and array memory) read by Rust with the GIL released: the one place
//! in the bindings that needs `unsafe`, so that a 512 MiB tensor goes to its blob file without
//! being copied into a `bytes` object first.

use pyo3::buffer::PyBuffer;

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
