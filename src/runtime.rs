//! How this crate's servers start: glibc's malloc held to a few arenas, then tokio's runtime.
//!
//! glibc gives a thread that finds the allocator busy an arena of its own, up to eight per core,
//! and each arena keeps what was freed in it for its own later allocations. A reconcile runs on
//! whichever worker thread is free, so every arena came to hold room for the largest passing
//! moment of the work (a wide job's pods decoded at once, a relist's pages): the operator over
//! 10,000 TrainJobs kept settled at 157 MiB where heaptrack saw at most 83 MB in use, and at
//! 109 MiB with two arenas (`make bench`, `BENCH_ONLY=big,kept`). The image's static musl build
//! has no arenas; this is for the glibc builds (`make run`, a distribution's package).

use std::future::Future;

/// Arenas glibc's malloc may use: one per worker thread of a 2-core machine, where the
/// difference was measured. Threads then share them; the operator allocates little per request.
pub const MALLOC_ARENAS: i32 = 2;

/// Runs `main` to its end on a multi-threaded tokio runtime, as `#[tokio::main]` does, after
/// capping glibc's malloc at [`MALLOC_ARENAS`] arenas (which must come before other threads
/// allocate).
pub fn run<F: Future>(main: F) -> std::io::Result<F::Output> {
    cap_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    Ok(runtime.block_on(main))
}

/// Whether the cap took (always, with glibc; there is nothing to cap elsewhere).
fn cap_malloc_arenas() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt sets one of the allocator's tunables; glibc takes it at any time.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        true
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_arena_cap_takes_and_the_main_future_runs_to_its_end() {
        assert!(super::cap_malloc_arenas());
        let answer = super::run(async { tokio::task::spawn(async { 42 }).await.expect("joins") });
        assert_eq!(answer.expect("a runtime"), 42);
    }
}
