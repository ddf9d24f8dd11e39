//! The `gradscope` binary's allocator settings.
//!
//! A training loop frees and allocates the same tensor buffers (128 KiB to a
//! few MiB) every step. glibc's defaults return such memory to the kernel
//! (mmap for large blocks, trimming the heap's top), so the next step takes
//! fresh pages: page faults that zero them, and, once the probe's thread
//! runs beside the training thread, TLB shoot-down interrupts to the other
//! core for every unmap. The probe makes that worse, since it keeps a step's
//! tensors until its thread has read them, so the next step's buffers cannot
//! take their place. Keeping freed memory in the heap for reuse (as PyTorch's
//! caching allocator does) costs resident memory up to the run's peak.

/// Keeps freed memory in the process for reuse, unless the user configured
/// glibc's allocator through `GLIBC_TUNABLES`. A no-op on other C libraries.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("malloc")) {
            return;
        }
        // SAFETY: `mallopt` only sets allocator parameters; called before any thread starts.
        unsafe {
            // Blocks up to 32 MiB (glibc's maximum) come from the heap, not mmap.
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            // Never shrink the heap; grow it 32 MiB at a time.
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TOP_PAD, 32 << 20);
        }
    }
}
