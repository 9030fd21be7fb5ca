//! Allocator tuning shared by the binary and the speed examples, so that what the examples
//! time is what `flowers` runs.

/// Makes glibc's malloc reuse freed blocks of up to 32 MiB instead of returning each one to
/// the kernel: tract copies the backbone's weights and allocates every layer's output
/// afresh, and with glibc's defaults each of those is a new mapping whose pages fault in one
/// by one, on every image (BENCHMARKS.md has the figures). Call it first thing in `main`,
/// before any thread starts; elsewhere than glibc it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning and is thread-safe in glibc; the
    // values are within the documented ranges.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}
