//! `Pool.close()` and `with Pool(...) as pool:`: the buffer let go at once, every later call
//! refused.
//!
//! A closed pool keeps its core and metadata (freed when the object is collected) but gives up
//! the objects that keep the buffer exported, so that its owner can `mmap.close()` it or hand
//! it to a new pool right away. The core still points into that memory, so no call may reach
//! it once `close` has begun: `with!` and `without_gil!` check `closed` right before they run
//! the core (with no Python code in between), and each method checks it first, to name itself
//! in the error. The protocol, all of it under the interpreter lock but the core's work of a
//! batch call:
//!
//! * a call checks `closed`, under the interpreter lock, and a batch call then counts itself in
//!   `busy` before it lets that lock go, and out again when its core work is done, before it
//!   takes the lock back;
//! * `close` sets `closed` under the interpreter lock, so that every call after it sees it, then
//!   waits, with the lock released, until `busy` is 0, so that every call before it has left
//!   the core; only then does it release the buffer.
//!
//! The gate's protocol is model-checked with loom below (`make loom`, under `--cfg gate_loom`),
//! the interpreter lock modelled by a mutex.

#[cfg(gate_loom)]
use loom::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    thread::yield_now,
};
#[cfg(not(gate_loom))]
use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    thread::yield_now,
};

use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::Pool;

/// A Python object the pool keeps until it is closed (its hold on the buffer, its claim on
/// that memory), then drops, under the interpreter lock, so that it goes at once.
pub(crate) struct Held(Mutex<Option<Py<PyAny>>>);

impl Held {
    pub(crate) fn new(obj: Py<PyAny>) -> Self {
        Held(Mutex::new(Some(obj)))
    }

    /// Drops the object now; `_py` proves the interpreter lock held, so its reference count
    /// drops at once rather than at the next acquisition of the lock.
    fn drop_now(&self, _py: Python<'_>) {
        let obj = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        drop(obj);
    }
}

/// Whether the pool is closed, and how many batch calls are running without the interpreter
/// lock.
pub(crate) struct Gate {
    closed: AtomicBool,
    busy: AtomicUsize,
}

/// A batch call counted in `Gate::busy` until this is dropped, which the call does when its
/// core work is done, before it takes the interpreter lock back.
pub(crate) struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        // Release: `close`, which reads `busy` with Acquire, sees the core work done.
        self.0.fetch_sub(1, Ordering::Release);
    }
}

impl Gate {
    /// An open gate, no call in it.
    pub(crate) fn new() -> Self {
        Gate {
            closed: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
        }
    }

    /// Whether `close` has begun. Read under the interpreter lock, as it is written.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Counts a batch call in, under the interpreter lock, after it found the pool open.
    #[inline]
    pub(crate) fn enter(&self) -> Busy<'_> {
        // Relaxed: `close` reads it under the interpreter lock too, after this call let go.
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(&self.busy)
    }

    /// `close`'s first step, under the interpreter lock: every call after it is refused.
    fn shut(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Whether a batch call counted in is still running.
    fn in_use(&self) -> bool {
        self.busy.load(Ordering::Acquire) != 0
    }

    /// Waits, without the interpreter lock, until no batch call is running: a batch call
    /// needs that lock back only after it counted itself out.
    fn wait_idle(&self) {
        while self.in_use() {
            yield_now();
        }
    }
}

/// What a method returns on a closed pool when `with!` refuses it: `Err(ValueError)` for a
/// method that raises, `None` for the fast entry points, which then take the full method.
pub(crate) trait OnClosed {
    fn on_closed() -> Self;
}

impl<T> OnClosed for PyResult<T> {
    fn on_closed() -> Self {
        Err(closed_error("Pool"))
    }
}

impl<T> OnClosed for Option<T> {
    fn on_closed() -> Self {
        None
    }
}

/// The ValueError of a call on a closed pool, in `pagebuddy._rules.msg_closed`'s words.
pub(crate) fn closed_error(op: &str) -> PyErr {
    PyValueError::new_err(format!(
        "{op}: the pool is closed: a closed pool takes no calls (build a new one)"
    ))
}

impl Pool {
    /// `Err` naming `op` once the pool is closed.
    #[inline]
    pub(crate) fn live(&self, op: &str) -> PyResult<()> {
        if self.gate.is_closed() {
            return Err(closed_error(op));
        }
        Ok(())
    }

    /// `close()`: refuses every later call, waits for the batch calls under way, then lets
    /// the buffer go. Closing again does nothing more.
    pub(crate) fn close_now(&self, py: Python<'_>) -> PyResult<()> {
        self.gate.shut();
        if self.gate.in_use() {
            py.detach(|| self.gate.wait_idle());
        }
        // A shared pool's owner ends here (its slot's mutex let go, before the buffer is).
        self.end_owner();
        self._export.drop_now(py);
        if !self.bytes.is_none(py) {
            // The views handed out are slices of `bytes`: they stay valid, and keep the buffer
            // exported until they go.
            self.bytes.bind(py).call_method0("release")?;
        }
        self._claim.drop_now(py);
        Ok(())
    }

    /// Whether `close` was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.gate.is_closed()
    }
}

/// The gate's protocol under every interleaving loom finds: batch calls against `close`, the
/// interpreter lock a mutex, the core's memory a cell that a call writes without that lock
/// (under the core's own lock, the handoff or a spin lock: another mutex) and that `close`
/// writes when it lets the buffer go, under the interpreter lock alone. Loom reports any two
/// accesses to the cell that the protocol leaves unordered: a call reaching the core after the
/// buffer went.
#[cfg(all(test, gate_loom))]
mod loom_model {
    use loom::cell::UnsafeCell;
    use loom::sync::{Arc, Mutex};

    use super::Gate;

    /// The arena: a batch call's core work writes it, and so does `close` letting it go; and
    /// the core's lock, which batch calls take and `close` does not.
    struct Arena(UnsafeCell<u32>, Mutex<()>);

    // SAFETY: the cell is reached only through `with_mut`, which loom checks: two accesses it
    // cannot order fail the model instead of racing.
    unsafe impl Sync for Arena {}

    /// A batch call: checks the gate and counts itself in under the lock, works without it.
    fn batch_call(gil: &Mutex<()>, gate: &Gate, arena: &Arena) -> bool {
        let busy = {
            let _gil = gil.lock().unwrap();
            if gate.is_closed() {
                return false;
            }
            gate.enter()
        };
        let core = arena.1.lock().unwrap();
        // SAFETY: what the model checks: no other access to the arena runs meanwhile.
        arena.0.with_mut(|a| unsafe { *a += 1 });
        drop(core);
        drop(busy);
        true
    }

    /// `close_now`: shut under the lock, wait without it, let the buffer go under it.
    fn close(gil: &Mutex<()>, gate: &Gate, arena: &Arena) {
        let mut held = Some(gil.lock().unwrap());
        gate.shut();
        if gate.in_use() {
            drop(held.take());
            gate.wait_idle();
            held = Some(gil.lock().unwrap());
        }
        // SAFETY: as in `batch_call`.
        arena.0.with_mut(|a| unsafe { *a = u32::MAX });
        drop(held);
    }

    #[test]
    fn close_waits_for_batch_calls_and_refuses_later_ones() {
        loom::model(|| {
            let gil = Arc::new(Mutex::new(()));
            let gate = Arc::new(Gate::new());
            let arena = Arc::new(Arena(UnsafeCell::new(0), Mutex::new(())));
            let calls: Vec<_> = (0..2)
                .map(|_| {
                    let (gil, gate, arena) = (gil.clone(), gate.clone(), arena.clone());
                    loom::thread::spawn(move || batch_call(&gil, &gate, &arena))
                })
                .collect();
            close(&gil, &gate, &arena);
            for call in calls {
                call.join().unwrap();
            }
            // SAFETY: every thread is joined: this is the only access.
            assert_eq!(
                arena.0.with_mut(|a| unsafe { *a }),
                u32::MAX,
                "a call ran after close"
            );
            assert!(gate.is_closed() && !gate.in_use());
            assert!(!batch_call(&gil, &gate, &arena), "a call after close ran");
        });
    }
}
