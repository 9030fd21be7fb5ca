//! Allocator tuning shared by the binary and the speed examples, so that what the examples
//! time is what `flowers` runs.

/// Makes glibc's malloc reuse freed blocks of up to 32 MiB instead of returning each one to
/// the kernel: tract copies the backbone's weights and allocates every layer's output
/// afresh, and with glibc's defaults each of those is a new mapping whose pages fault in one
/// by one, on every image (BENCHMARKS.md has the figures).
///
/// It also keeps every thread on the one arena. glibc gives each new thread an arena of
/// its own, so the pool thread that runs `label`'s image would allocate the layers'
/// outputs from fresh pages while the memory that loading the graph freed sits unused in
/// the main thread's arena; the threads allocate a few buffers per layer, so sharing the
/// arena's lock costs nothing measurable. Call it first thing in `main`, before any thread
/// starts; elsewhere than glibc it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning and is thread-safe in glibc; the
    // values are within the documented ranges.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}
