//! Where the binary's work runs: on a worker of a rayon pool.
//!
//! Burn's flex kernels, gemm and gradscope's own ops split their work with
//! rayon. Called from a thread outside the pool, every such split is sent to
//! the pool and waited for: the caller sleeps and is woken once per split, a
//! few hundred times per training step. Run on one of the pool's workers,
//! the caller takes part in the work and the other workers steal from it.
//! The pool has `RAYON_NUM_THREADS` threads (all cores by default), as the
//! global pool would, and the main thread's stack size.

use anyhow::Result;

/// The stack each worker gets (Linux's default for a main thread).
const STACK_BYTES: usize = 8 << 20;

/// `work()` on a worker of a new rayon pool; the calling thread waits.
pub fn in_pool(work: impl FnOnce() -> Result<()> + Send) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .stack_size(STACK_BYTES)
        .thread_name(|i| format!("gradscope-{i}"))
        .build()?;
    pool.install(work)
}
