//! Leaving no copy of the training thread's buffers in the probe thread's cache.
//!
//! On the CPU backends the probe's thread reads a step's tensors where they
//! lie, in buffers the training thread allocated. Those reads leave the lines
//! in the probe core's private (L2) cache. Once the probe lets go of a tensor,
//! the allocator hands its buffer back to the training thread, whose next
//! write to each such line must first take it from the other core (a
//! cross-core snoop) instead of finding it in the shared L3 cache.
//!
//! [`release_lines`] pushes those lines out the portable way: by reading a
//! private buffer larger than any current core's L2 (the x86 `cldemote` hint
//! did not help). On `mlp-sigmoid-8x256` (flex, one training thread, 2-core
//! Emerald Rapids VM; probed blocks with and without it alternating within
//! each process) a probed step cost 200 us more than an unprobed one with it
//! and 230 us without, most of the difference in the next step's forward and
//! backward passes; an earlier check gave 2.45% against 3.11% overhead. Small,
//! near that VM's noise, and in the same direction both times. It costs the
//! probe's thread ~0.1 ms per probe step, off the training thread.

use std::hint::black_box;

/// Bytes read after each job: twice the 2 MiB L2 of recent Intel server
/// cores, so that the cache's replacement policy evicts everything else.
pub(crate) const RELEASE_BYTES: usize = 4 << 20;

/// A cache line on every CPU gradscope runs on.
const LINE: usize = 64;

thread_local! {
    static SCRATCH: Vec<u8> = vec![1; RELEASE_BYTES];
}

/// Reads one byte of every cache line of this thread's scratch buffer, which
/// replaces whatever the thread's core cache held. Returns the number of lines
/// read (every byte is 1).
pub(crate) fn release_lines() -> usize {
    SCRATCH.with(|scratch| scratch.iter().step_by(LINE).map(|&b| usize::from(black_box(b))).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_line_of_the_scratch_buffer() {
        assert_eq!(release_lines(), RELEASE_BYTES / LINE);
        // The buffer is the thread's own and is kept: a second call reads it again.
        assert_eq!(release_lines(), RELEASE_BYTES / LINE);
    }
}
