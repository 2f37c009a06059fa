//! Host heap policy for CPU training.
//!
//! burn's CPU backends allocate a fresh buffer for almost every op result (a training step
//! of a 135M model allocates and frees about a gigabyte). glibc serves blocks above its mmap
//! threshold (128 KiB, raised dynamically up to 32 MiB) with fresh `mmap`s and returns freed
//! heap tops to the kernel, so each step faults in and zeroes those pages again: about
//! 260 000 page faults per step on SmolLM2-135M at 4 × 128 tokens, 10–25 % of the step. With
//! mmap off and trimming off, freed blocks are reused and a step faults in almost nothing
//! (6 000 faults). The price: the process keeps its peak heap until it exits (the peak
//! resident size does not grow: the same blocks are reused).

/// Make the C heap keep and reuse freed memory instead of returning it to the kernel.
///
/// Call once, first thing in `main`, before threads start. Only the `ipa` binary calls it: a
/// library should not change its host's allocator. Does nothing off glibc.
pub fn retain_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; called before other threads exist.
    unsafe {
        // Every block from the heap (brk or per-thread arenas), none from a private mmap.
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // Never hand the top of the heap back (the value is the largest a c_int holds).
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
        // Grow the heap in 64 MiB steps rather than per request.
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
