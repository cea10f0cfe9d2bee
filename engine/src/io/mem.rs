//! Page-aligned memory shared with the kernel.

use std::io;
use std::ptr::NonNull;

/// An anonymous private mapping: page aligned (the provided-buffer ring requires it) and
/// never moved. It hands out raw pointers only, because the kernel reads or writes parts
/// of it while we touch others, which Rust references to the whole could not express.
pub(crate) struct Region {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned by this value; all access goes through raw
// pointers whose users (the backends, under `&mut self`) synchronise with the kernel.
unsafe impl Send for Region {}

impl Region {
    /// Maps `len` zeroed bytes, `len > 0`.
    pub(crate) fn new(len: usize) -> io::Result<Self> {
        assert!(len > 0, "callers size regions from validated options");
        // SAFETY: an anonymous mapping with a null hint touches no existing memory; the
        // result is checked against MAP_FAILED before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Self { ptr, len })
    }

    /// Start of the region.
    pub(crate) fn base(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Gives the memory up without unmapping it: for when the kernel might still write
    /// into it and we could not make sure it won't.
    pub(crate) fn leak(self) {
        std::mem::forget(self);
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned and nothing uses the region after
        // drop; backends leak instead of dropping while the kernel may hold it.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}
