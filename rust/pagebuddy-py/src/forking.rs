//! fork() and the calls that run without the interpreter lock.
//!
//! A batch call lets the interpreter lock go while it holds a pool (a plain pool handed off, a
//! cached pool's lock, a shared pool's robust mutex). A thread that forks meanwhile would leave
//! the child a copy of that pool held by a thread that does not exist there, and the child's
//! next call on it would wait forever. So `os.fork()` waits, in `_before_fork` (registered with
//! `os.register_at_fork`), until no batch call is in flight in this process. Meanwhile new ones
//! wait before they take their pool (the interpreter lock let go, so that the forking thread
//! runs), until the fork is done (`_after_fork_parent`, or the child's `_after_fork`); after
//! the wait, none can start anyway, since they need the interpreter lock, which the forking
//! thread holds until the fork.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use pyo3::prelude::*;

/// Batch calls of this process between taking a pool and giving it back.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// A thread is about to fork: batch calls wait before they take a pool.
static FORKING: AtomicBool = AtomicBool::new(false);

/// A batch call in flight, from before it takes its pool (under the interpreter lock) until it
/// has given it back (dropped after the interpreter lock is taken again).
pub(crate) struct InFlight(());

impl InFlight {
    /// `_py` proves the interpreter lock held: a fork cannot be between its wait and the fork.
    pub(crate) fn enter(py: Python<'_>) -> Self {
        while FORKING.load(Ordering::Acquire) {
            Self::wait_for_fork(py);
        }
        IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        InFlight(())
    }

    #[cold]
    #[inline(never)]
    fn wait_for_fork(py: Python<'_>) {
        py.detach(|| std::thread::sleep(Duration::from_micros(50)));
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Registered with `os.register_at_fork(before=...)`: waits, the interpreter lock let go, until
/// no batch call holds a pool, so that the child gets every pool free.
#[pyfunction]
pub(crate) fn _before_fork(py: Python<'_>) {
    FORKING.store(true, Ordering::Release);
    while IN_FLIGHT.load(Ordering::Acquire) != 0 {
        py.detach(|| std::thread::sleep(Duration::from_micros(50)));
    }
}

/// Registered with `os.register_at_fork(after_in_parent=...)`: batch calls go on.
#[pyfunction]
pub(crate) fn _after_fork_parent() {
    FORKING.store(false, Ordering::Release);
}

/// In the child (from `shared::_after_fork`): batch calls go on.
pub(crate) fn forked() {
    FORKING.store(false, Ordering::Release);
}
