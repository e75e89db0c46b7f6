//! The daemon's helper threads: the journal writer and the line sinks' writers, which do their
//! blocking file work off the async runtime.
//!
//! In: a name and the thread's loop. Out: the running thread, scheduled (on Linux) with
//! `SCHED_BATCH`. Each of these threads sleeps until the async thread hands it work, and under
//! the default policy the thread it wakes preempts the async thread at once, on the same core:
//! two context switches for every hand-off, while the async thread was about to go on with other
//! requests anyway. A batch thread, woken, waits for the next scheduling point instead (or runs
//! on an idle core), so that the async thread finishes what it was doing and the helper then
//! takes several hand-offs at once. Its share of the CPU and its niceness stay as they were; only
//! the preemption on wake-up goes. See docs/architecture.md, "Helper threads do not preempt".

use std::io;
use std::thread::JoinHandle;

/// Starts the helper thread `name` running `run`.
pub(crate) fn spawn_helper<T: Send + 'static>(
    name: &str,
    run: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            set_batch_policy();
            run()
        })
}

/// Marks the calling thread `SCHED_BATCH`. Should the system refuse (it may not know the
/// policy), the thread keeps the default one: only the scheduling of wake-ups differs.
#[allow(unsafe_code)]
fn set_batch_policy() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `sched_setscheduler` only reads `param`, during the call; pid 0 is the calling
        // thread. SCHED_BATCH needs no privilege and keeps the thread's niceness.
        let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        if result != 0 {
            tracing::debug!(
                error = %io::Error::last_os_error(),
                "helper thread keeps the default scheduling policy"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    #[test]
    fn a_helper_thread_runs_with_the_batch_policy_and_the_caller_keeps_its_own() {
        // SAFETY: `sched_getscheduler` takes no pointer; pid 0 is the calling thread.
        let policy = || unsafe { libc::sched_getscheduler(0) };
        let before = policy();
        let helper = spawn_helper("policy-test", policy).map(|thread| thread.join());
        assert!(matches!(helper, Ok(Ok(libc::SCHED_BATCH))), "{helper:?}");
        assert_eq!(policy(), before);
        assert_ne!(before, libc::SCHED_BATCH);
    }

    #[test]
    fn a_helper_thread_has_its_name_and_returns_its_result() {
        let helper = spawn_helper("named-helper", || {
            std::thread::current().name().map(str::to_string)
        })
        .map(|thread| thread.join());
        assert!(
            matches!(&helper, Ok(Ok(Some(name))) if name == "named-helper"),
            "{helper:?}"
        );
    }
}
