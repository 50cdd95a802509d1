//! Keeping freed memory in the process while training.
//!
//! Every tensor operation allocates its output, and a CNN step at batch 128 allocates and frees
//! buffers of 3 to 18 MB dozens of times. glibc's malloc hands buffers that large back to the
//! kernel (fresh `mmap`s, and trimming the top of the heap), so each step page-faults its way
//! through the same memory again, and page faults and zeroed pages take a large share of a
//! CNN epoch (B4, BENCHMARKS.md). Training keeps freed memory for reuse instead: buffers up to
//! 32 MiB come from the heap, and the heap is not trimmed below 1 GiB of free space. Peak
//! memory does not grow; memory freed after a peak is simply kept.
//!
//! The `engram` binary applies the same settings to every command: the streaming weight-space
//! commands allocate a few 1 MiB chunk buffers per chunk and thread, and the same page
//! faults slow them (`engram bench merge`).

/// Applies the settings (glibc on Linux; elsewhere nothing). Idempotent and cheap.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's <malloc.h>.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: mallopt only changes malloc's tuning parameters; any values are valid, and
        // glibc serialises it with allocation.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}
