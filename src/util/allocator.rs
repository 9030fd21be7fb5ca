//! Allocator tuning shared by the binary and the speed examples, so that what the examples
//! time is what `flowers` runs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

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

/// The binary's global allocator: the system's, which besides asks the kernel for
/// transparent huge pages under every large allocation once
/// [`huge_pages_for_large_allocations`] was called.
///
/// Why: with transparent huge pages in `madvise` mode (Debian's and many distributions'
/// default), fresh memory is mapped one 4 KiB page per fault. A short run that fills a few
/// large buffers once (`label` of one photo: the graph's bytes, the weights and their
/// packed copies, the activations) spends much of its time in those faults; under an
/// advised range the kernel maps 2 MiB per fault. Only the advice is added: every block is
/// allocated, grown and freed by the system allocator as before.
pub struct Allocator;

/// Whether large allocations are advised onto huge pages.
static HUGE_PAGES: AtomicBool = AtomicBool::new(false);

/// A transparent huge page on x86-64 and most 64-bit Linux targets.
const HUGE_PAGE: usize = 2 << 20;

/// The smallest block advised: half a huge page, so that a block straddling a boundary
/// still advises the pages it lies in.
const LARGE: usize = HUGE_PAGE / 2;

/// From now on, large allocations are advised onto huge pages (see [`Allocator`]).
pub fn huge_pages_for_large_allocations() {
    HUGE_PAGES.store(true, Ordering::Relaxed);
}

/// Advises the huge pages `[ptr, ptr + size)` lies in, if asked to. Pages of the range
/// already mapped stay as they are; the rest of the heap around the block is advised too,
/// which only lets later blocks there be mapped the same way.
fn advise(ptr: *mut u8, size: usize) {
    if size < LARGE || ptr.is_null() || !HUGE_PAGES.load(Ordering::Relaxed) {
        return;
    }
    let start = ptr as usize / HUGE_PAGE * HUGE_PAGE;
    let end = (ptr as usize)
        .saturating_add(size)
        .next_multiple_of(HUGE_PAGE);
    #[cfg(target_os = "linux")]
    // SAFETY: MADV_HUGEPAGE changes how the pages of a range are mapped, never their
    // content, whoever owns them; parts of the range not mapped at all are refused
    // (ENOMEM) and left alone, as is everything on a kernel without huge pages.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, end);
}

// SAFETY: every block comes from `System` and goes back to it with the same layout; the
// advice only changes how the kernel maps the pages of a block not touched yet.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let ptr = unsafe { System.alloc(layout) };
        advise(ptr, layout.size());
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() < LARGE || !HUGE_PAGES.load(Ordering::Relaxed) {
            // SAFETY: the caller's contract, passed on.
            return unsafe { System.alloc_zeroed(layout) };
        }
        // Advised before the zeroes are written, so that writing them maps huge pages.
        // SAFETY: the caller's contract, passed on; a non-null block has `layout.size()`
        // writable bytes.
        unsafe {
            let ptr = System.alloc(layout);
            advise(ptr, layout.size());
            if !ptr.is_null() {
                std::ptr::write_bytes(ptr, 0, layout.size());
            }
            ptr
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on: `ptr` came from `System` with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on: `ptr` came from `System` with `layout`.
        let grown = unsafe { System.realloc(ptr, layout, new_size) };
        advise(grown, new_size);
        grown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `VmFlags` of the mapping holding `address`, from `/proc/self/smaps`.
    #[cfg(target_os = "linux")]
    fn mapping_flags(address: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((start, end)) = range.split_once('-') {
                    if let (Ok(start), Ok(end)) = (
                        usize::from_str_radix(start, 16),
                        usize::from_str_radix(end, 16),
                    ) {
                        inside = (start..end).contains(&address);
                        continue;
                    }
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return flags.to_string();
                }
            }
        }
        panic!("no mapping holds {address:#x}")
    }

    #[test]
    fn large_blocks_are_advised_onto_huge_pages_and_stay_ordinary_blocks() {
        huge_pages_for_large_allocations();
        let layout = Layout::from_size_align(5 << 20, 64).unwrap();
        let grown_layout = Layout::from_size_align(9 << 20, 64).unwrap();
        // SAFETY: a non-zero layout; the block is used within its size and freed once,
        // with the layout it has at that time.
        unsafe {
            let ptr = Allocator.alloc_zeroed(layout);
            assert!(!ptr.is_null());
            let block = std::slice::from_raw_parts_mut(ptr, layout.size());
            assert!(block.iter().all(|&b| b == 0));
            block.fill(7);
            #[cfg(target_os = "linux")]
            if std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
                let aligned = (ptr as usize).next_multiple_of(HUGE_PAGE);
                let flags = mapping_flags(aligned);
                assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
            }
            let grown = Allocator.realloc(ptr, layout, grown_layout.size());
            assert!(!grown.is_null());
            let block = std::slice::from_raw_parts(grown, layout.size());
            assert!(block.iter().all(|&b| b == 7));
            Allocator.dealloc(grown, grown_layout);
        }
        // Small blocks are the system's, untouched.
        let small = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: as above.
        unsafe {
            let ptr = Allocator.alloc_zeroed(small);
            assert!(std::slice::from_raw_parts(ptr, 100).iter().all(|&b| b == 0));
            Allocator.dealloc(ptr, small);
        }
    }
}
