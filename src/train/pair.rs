//! A second thread kept for the two products of every SGD step.
//!
//! Why not rayon: a step's products are tens of microseconds of work, and rayon's idle
//! workers go to sleep between steps, so waking one costs about what half a product saves.
//! [`Pair`] keeps its thread spinning while steps come (parking it after a quiet spell),
//! and hands it half of a product through two atomics.

use std::cell::UnsafeCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

/// The helper waits for work.
const IDLE: u8 = 0;
/// The helper sleeps in `park`; whoever gives it work unparks it.
const PARKED: u8 = 1;
/// A job is in `Shared::job`, not yet started: the helper may take it, or the caller take
/// it back.
const WORK: u8 = 2;
/// The helper took the job and is running it.
const RUNNING: u8 = 3;
/// The helper ran the job (it may have panicked: `Shared::panic`).
const DONE: u8 = 4;
/// The helper is to end.
const QUIT: u8 = 5;

/// Spins of an idle helper before it parks: about a millisecond, many steps' worth.
const SPINS_BEFORE_PARKING: u32 = 1 << 16;

/// Half of a product, type-erased: `run(data)` runs it once.
#[derive(Clone, Copy)]
struct Job {
    run: unsafe fn(*mut ()),
    data: *mut (),
}

struct Shared {
    state: AtomicU8,
    /// Written by the caller before `WORK`, read by the helper after seeing `WORK`.
    job: UnsafeCell<Option<Job>>,
    /// Written by the helper before `DONE`, taken by the caller after seeing `DONE`.
    panic: UnsafeCell<Option<Box<dyn std::any::Any + Send>>>,
}

// SAFETY: `job` and `panic` are only touched by one thread at a time, in turns the `state`
// atomic hands over with release/acquire ordering (caller: job, then WORK; helper: WORK ->
// RUNNING, reads the job, writes panic, then DONE; caller: reads panic after DONE, or takes
// the job back with WORK -> IDLE, after which the helper does not read it). A `Job`'s data is only
// sent to the helper by `Pair::join`, whose closure is `Send`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointers inside are only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// Two threads for one computation: the caller's and a helper's.
pub(super) struct Pair {
    helper: Option<(Arc<Shared>, JoinHandle<()>)>,
}

/// The lone caller: no helper thread.
impl Default for Pair {
    fn default() -> Pair {
        Pair { helper: None }
    }
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let threads = if self.helper.is_some() { 2 } else { 1 };
        f.debug_struct("Pair").field("threads", &threads).finish()
    }
}

impl Pair {
    /// A pair with a helper thread, or a lone caller (`join` runs both halves itself) if
    /// `threads` is 1 or the thread cannot be started.
    pub(super) fn new(threads: usize) -> Pair {
        if threads < 2 {
            return Pair::default();
        }
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            job: UnsafeCell::new(None),
            panic: UnsafeCell::new(None),
        });
        let theirs = shared.clone();
        let helper = thread::Builder::new()
            .name("flowers-sgd".into())
            .spawn(move || serve(&theirs))
            .ok()
            .map(|handle| (shared, handle));
        Pair { helper }
    }

    /// Runs `theirs` on the helper and `mine` on the caller, and returns when both are
    /// done; a panic in either is resumed here, after both have ended.
    pub(super) fn join(&self, theirs: impl FnOnce() + Send, mine: impl FnOnce()) {
        let Some((shared, handle)) = &self.helper else {
            theirs();
            mine();
            return;
        };
        let mut theirs = Some(theirs);
        let job = Job {
            run: run_once::<_>(&theirs),
            data: (&mut theirs as *mut Option<_>).cast(),
        };
        // SAFETY: the helper is IDLE or PARKED (every join waits for DONE and resets it to
        // IDLE before returning), so it does not read `job` until it sees WORK below.
        unsafe { *shared.job.get() = Some(job) };
        if shared.state.swap(WORK, Ordering::AcqRel) == PARKED {
            handle.thread().unpark();
        }
        // Settles the hand-off even if `mine` panics: `theirs` lives in this frame.
        let mut handoff = Handoff {
            shared,
            settled: false,
        };
        mine();
        if handoff.settle() {
            // The helper never started (its core was busy elsewhere): run it here.
            if let Some(theirs) = theirs.take() {
                theirs();
            }
            return;
        }
        // SAFETY: the helper wrote `panic` before DONE, which `settle` saw (acquire).
        if let Some(payload) = unsafe { (*shared.panic.get()).take() } {
            panic::resume_unwind(payload);
        }
    }
}

/// The trampoline for a closure of type `F` kept in an `Option<F>`: `witness` only fixes `F`.
fn run_once<F: FnOnce()>(_witness: &Option<F>) -> unsafe fn(*mut ()) {
    /// # Safety
    /// `data` points to a live `Option<F>` that no other thread touches meanwhile.
    unsafe fn run<F: FnOnce()>(data: *mut ()) {
        // SAFETY: per this function's contract.
        let slot = unsafe { &mut *data.cast::<Option<F>>() };
        if let Some(f) = slot.take() {
            f();
        }
    }
    run::<F>
}

/// The end of a hand-off: the job taken back if the helper has not started it, else
/// waited for.
struct Handoff<'a> {
    shared: &'a Shared,
    settled: bool,
}

impl Handoff<'_> {
    /// Returns whether the job was taken back (the caller must run it); either way the
    /// helper no longer touches it when this returns, and is idle.
    fn settle(&mut self) -> bool {
        self.settled = true;
        let state = &self.shared.state;
        if state
            .compare_exchange(WORK, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return true;
        }
        let mut spins = 0u32;
        while state.load(Ordering::Acquire) != DONE {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                // The helper may have lost its core mid-job: let it run.
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        state.store(IDLE, Ordering::Release);
        false
    }
}

impl Drop for Handoff<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.settle();
        }
    }
}

/// The helper's loop: run jobs as they come, park when none came for a while.
fn serve(shared: &Shared) {
    let mut idle_spins = 0u32;
    loop {
        match shared.state.load(Ordering::Acquire) {
            WORK => {
                if shared
                    .state
                    .compare_exchange(WORK, RUNNING, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    // Taken back by the caller.
                    continue;
                }
                // SAFETY: the caller wrote the job before WORK (seen with acquire), and once
                // the job is RUNNING it waits for DONE before touching it or the closure it
                // points to again.
                let job = unsafe { (*shared.job.get()).take() };
                let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
                    if let Some(job) = job {
                        // SAFETY: `data` points to the `Option<F>` in `Pair::join`'s frame,
                        // alive until DONE is seen, and `run` is that `F`'s trampoline.
                        unsafe { (job.run)(job.data) }
                    }
                }));
                // SAFETY: the caller reads `panic` only after seeing DONE, stored below.
                unsafe { *shared.panic.get() = outcome.err() };
                shared.state.store(DONE, Ordering::Release);
                idle_spins = 0;
            }
            QUIT => return,
            IDLE if idle_spins >= SPINS_BEFORE_PARKING => {
                if shared
                    .state
                    .compare_exchange(IDLE, PARKED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    while shared.state.load(Ordering::Acquire) == PARKED {
                        thread::park();
                    }
                }
                idle_spins = 0;
            }
            _ => {
                idle_spins += 1;
                std::hint::spin_loop();
            }
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if let Some((shared, handle)) = self.helper.take() {
            if shared.state.swap(QUIT, Ordering::AcqRel) == PARKED {
                handle.thread().unpark();
            }
            // A helper that panicked outside a job has nothing left to report.
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_halves_run_on_two_threads_and_a_lone_caller() {
        for threads in [1, 2] {
            let pair = Pair::new(threads);
            let mut on_the_helper = 0;
            for round in 0..200u64 {
                let (mut a, mut b) = (0u64, 0u64);
                let caller = thread::current().id();
                let mut helper_thread = None;
                pair.join(
                    || {
                        a = round * 2;
                        helper_thread = Some(thread::current().id());
                    },
                    || {
                        // Long enough for the helper to pick the job up meanwhile.
                        thread::sleep(std::time::Duration::from_micros(50));
                        b = round * 3;
                    },
                );
                assert_eq!((a, b), (round * 2, round * 3));
                on_the_helper += usize::from(helper_thread != Some(caller));
            }
            // A helper that has not started a job when the caller is done loses it to the
            // caller, so on two threads only some rounds are sure to reach it.
            match threads {
                1 => assert_eq!(on_the_helper, 0),
                _ => assert!(on_the_helper > 0),
            }
        }
    }

    #[test]
    fn a_job_the_helper_has_not_started_is_taken_back() {
        let pair = Pair::new(2);
        // Park the helper, then give it work and finish at once: either it woke in time
        // and ran the job, or the caller took it back; the job ran exactly once.
        thread::sleep(std::time::Duration::from_millis(20));
        for _ in 0..100 {
            let mut runs = 0;
            pair.join(|| runs += 1, || {});
            assert_eq!(runs, 1);
        }
    }

    #[test]
    fn a_parked_helper_is_woken() {
        let pair = Pair::new(2);
        let mut seen = 0;
        pair.join(|| seen += 1, || {});
        thread::sleep(std::time::Duration::from_millis(50));
        pair.join(|| seen += 1, || {});
        assert_eq!(seen, 2);
    }

    #[test]
    fn a_panic_in_the_helper_reaches_the_caller_and_the_pair_still_works() {
        let pair = Pair::new(2);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            pair.join(|| panic!("helper half"), || {});
        }));
        assert!(outcome.is_err());
        let mut ran = false;
        pair.join(|| ran = true, || {});
        assert!(ran);
    }
}
