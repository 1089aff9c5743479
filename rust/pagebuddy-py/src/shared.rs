//! Shared pools for Python: `Pool.create_in(buffer, ...)` and `Pool.attach(buffer)` over the
//! core's [`SharedPool`], with the process id as owner and `/proc` telling dead holders.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use pagebuddy::{
    pages_that_fit, Config, Intrusive, LayoutError, SharedLinks, SharedPool, SideTable, ZeroPolicy,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::close::{Gate, Held};
use crate::convert::{choice, raise, unsigned, Exc, Int};
use crate::{Inner, Pool};

/// This process's id, refreshed in a forked child (see `after_fork`).
static PID: AtomicU32 = AtomicU32::new(0);

/// The owner id this process locks shared pools under: its pid.
pub(crate) fn pid() -> u32 {
    match PID.load(Ordering::Relaxed) {
        0 => {
            let p = std::process::id();
            PID.store(p, Ordering::Relaxed);
            p
        }
        p => p,
    }
}

/// Registered with `os.register_at_fork`: a child locks under its own pid.
#[pyfunction]
pub(crate) fn _after_fork() {
    PID.store(std::process::id(), Ordering::Relaxed);
}

/// For tests: the `n`th crash point of a shared pool's operations from now, in this process,
/// kills it with SIGKILL (0 disarms): a process stopped between two steps of an operation.
#[pyfunction]
pub(crate) fn _crash_after(n: u32) {
    pagebuddy::crash_points::arm(n, kill_self);
}

/// SIGKILL to this process (then abort, should it return).
fn kill_self() {
    #[cfg(unix)]
    {
        extern "C" {
            fn kill(pid: i32, sig: i32) -> i32;
        }
        const SIGKILL: i32 = 9;
        // SAFETY: kill(2) with this process's id and a signal number; it touches no memory.
        unsafe {
            kill(std::process::id() as i32, SIGKILL);
        }
    }
    std::process::abort();
}

/// Whether process `pid` is gone: no `/proc/<pid>`, or a zombie (killed, not yet reaped).
/// Where there is no `/proc`, holders are never taken for dead.
fn pid_dead(pid: u32) -> bool {
    if !std::path::Path::new("/proc/self").exists() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses, which may itself hold any bytes.
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next())
            .is_some_and(|state| matches!(state, 'Z' | 'X')),
    }
}

/// Between polls of a held lock: spin, then yield, then sleep (the holder may be another
/// process descheduled on a busy machine).
pub(crate) fn pause(polls: u32) {
    if polls < 64 {
        std::hint::spin_loop();
    } else if polls < 1000 {
        std::thread::yield_now();
    } else {
        std::thread::sleep(std::time::Duration::from_micros(50));
    }
}

/// An int argument from `lo` to `hi`, or ValueError naming it.
fn int_in(obj: &Bound<'_, PyAny>, what: &str, lo: u64, hi: u64) -> PyResult<u64> {
    let v = unsigned(obj, what)?;
    if v < lo || v > hi {
        return Err(PyValueError::new_err(format!(
            "{what} must be from {lo} to {hi}, got {v}"
        )));
    }
    Ok(v)
}

fn layout_error(py: Python<'_>, op: &str, e: LayoutError) -> PyErr {
    match e {
        LayoutError::Header | LayoutError::Journal | LayoutError::Corrupted(_) => {
            raise(py, Exc::Corruption, format!("{op}: {e}"))
        }
        _ => PyValueError::new_err(format!("{op}: {e}")),
    }
}

fn zero_name(z: ZeroPolicy) -> &'static str {
    match z {
        ZeroPolicy::OnFree => "free",
        ZeroPolicy::OnAlloc => "alloc",
        ZeroPolicy::Never => "never",
    }
}

/// The arguments of `Pool.create_in`, as given.
pub(crate) struct CreateArgs<'a, 'py> {
    pub page_size: Option<&'a Bound<'py, PyAny>>,
    pub base_pfn: Option<&'a Bound<'py, PyAny>>,
    pub reserved_pages: Option<&'a Bound<'py, PyAny>>,
    pub max_order: Option<&'a Bound<'py, PyAny>>,
    pub zero: Option<&'a Bound<'py, PyAny>>,
    pub links: Option<&'a Bound<'py, PyAny>>,
}

impl Pool {
    /// The buffer as a byte memoryview, pinned, with its address and length.
    fn shared_bytes<'py>(
        buffer: &Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, usize, usize)> {
        let bytes = Self::arena(buffer.py(), Some(buffer), 0)?;
        let len: usize = bytes.getattr("nbytes")?.extract()?;
        if len == 0 {
            return Err(PyValueError::new_err("buffer is empty"));
        }
        let (pin, addr) = Self::export(&bytes, len)?;
        Ok((bytes, pin, addr, len))
    }

    pub(crate) fn create_in_impl(
        py: Python<'_>,
        buffer: &Bound<'_, PyAny>,
        a: CreateArgs<'_, '_>,
    ) -> PyResult<Self> {
        let page_size = match a.page_size {
            Some(ps) => int_in(ps, "page_size", 64, 1 << 30)? as usize,
            None => 4096,
        };
        if !page_size.is_power_of_two() {
            return Err(PyValueError::new_err(format!(
                "page_size must be a power of two, got {page_size}"
            )));
        }
        let intrusive = match a.links {
            Some(l) => choice(l, "links", &["side", "intrusive"])? == "intrusive",
            None => false,
        };
        let zero = match a.zero {
            Some(z) => match choice(z, "zero", &["free", "alloc", "never"])? {
                "alloc" => ZeroPolicy::OnAlloc,
                "never" => ZeroPolicy::Never,
                _ => ZeroPolicy::OnFree,
            },
            None => ZeroPolicy::OnFree,
        };
        let cap = match a.max_order {
            None => 11,
            Some(m) => match Int::of(m, || "max_order")? {
                Int::Val(v) if v >= 1 => v.min(u64::from(u32::MAX)) as u32,
                Int::Huge(_) => u32::MAX,
                other => {
                    return Err(PyValueError::new_err(format!(
                        "max_order must be an int >= 1, got {}",
                        other.text()
                    )))
                }
            },
        };
        let (bytes, pin, addr, len) = Self::shared_bytes(buffer)?;
        let nr = pages_that_fit(len, page_size, intrusive);
        if nr == 0 {
            return Err(PyValueError::new_err(format!(
                "buffer of {len} bytes holds no page of {page_size} bytes after the pool's header \
                 and metadata"
            )));
        }
        let base_pfn = match a.base_pfn {
            Some(b) => int_in(b, "base_pfn", 0, u64::MAX - nr as u64 + 1)?,
            None => 0,
        };
        let reserved = match a.reserved_pages {
            Some(r) => int_in(r, "reserved_pages", 0, nr as u64)? as usize,
            None => 0,
        };
        let config = Config::new(nr)
            .page_size(page_size)
            .base_pfn(base_pfn)
            .reserved_pages(reserved)
            .order_cap(cap)
            .zero(zero);
        let ptr = std::ptr::NonNull::new(addr as *mut u8)
            .ok_or_else(|| PyValueError::new_err("buffer has no memory"))?;
        // SAFETY: `addr` is the start of a writable export of `len` bytes, pinned by `pin`, which
        // the `Pool` keeps (and drops after `inner`). Other processes reach the bytes only through
        // shared pools of their own; Python, through views of held pages.
        let inner = unsafe {
            if intrusive {
                let mut p = SharedPool::<Intrusive>::create_raw(ptr, len, config, pid())
                    .map_err(|e| layout_error(py, "create_in", e))?;
                p.set_is_dead(pid_dead);
                Inner::SharedIntrusive(p)
            } else {
                let mut p = SharedPool::<SideTable>::create_raw(ptr, len, config, pid())
                    .map_err(|e| layout_error(py, "create_in", e))?;
                p.set_is_dead(pid_dead);
                Inner::SharedSide(p)
            }
        };
        Self::from_shared(inner, pin, bytes)
    }

    pub(crate) fn attach_impl(py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (bytes, pin, addr, len) = Self::shared_bytes(buffer)?;
        let ptr = std::ptr::NonNull::new(addr as *mut u8)
            .ok_or_else(|| PyValueError::new_err("buffer has no memory"))?;
        // SAFETY: as in `create_in_impl`.
        let side = unsafe { SharedPool::<SideTable>::attach_raw(ptr, len, pid()) };
        let inner = match side {
            Ok(p) => Inner::SharedSide(opened(py, p)?),
            Err(LayoutError::LinkStore { intrusive: true }) => {
                // SAFETY: as above.
                let p = unsafe { SharedPool::<Intrusive>::attach_raw(ptr, len, pid()) }
                    .map_err(|e| layout_error(py, "attach", e))?;
                Inner::SharedIntrusive(opened(py, p)?)
            }
            Err(e) => return Err(layout_error(py, "attach", e)),
        };
        Self::from_shared(inner, pin, bytes)
    }

    fn from_shared(inner: Inner, pin: Bound<'_, PyAny>, bytes: Bound<'_, PyAny>) -> PyResult<Self> {
        let (geo, pages_off) = match &inner {
            Inner::SharedSide(p) => (p.geometry(), p.pages_offset()),
            Inner::SharedIntrusive(p) => (p.geometry(), p.pages_offset()),
            _ => return Err(PyTypeError::new_err("not a shared pool")),
        };
        Ok(Pool {
            inner,
            // Several handles on one shared buffer are the point: no exclusive claim.
            _claim: Held::new(pin.py().None()),
            _storage: None,
            _export: Held::new(pin.unbind()),
            bytes: bytes.unbind(),
            geo,
            zero: zero_name(geo.zero),
            pages_off,
            gate: Gate::new(),
            // Made by a static method, not `Pool(...)`: no `__init__` call is to come.
            initialised: AtomicBool::new(true),
        })
    }

    /// Whether the pool lives in a shared buffer.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self.inner, Inner::SharedSide(_) | Inner::SharedIntrusive(_))
    }
}

/// A freshly attached pool: recovers what a dead holder left (taking the lock over from it)
/// and checks every invariant under the lock, or refuses.
fn opened<'a, L: SharedLinks<'a>>(
    py: Python<'_>,
    mut pool: SharedPool<'a, L>,
) -> PyResult<SharedPool<'a, L>> {
    pool.set_is_dead(pid_dead);
    {
        let g = pool.lock_as(pid(), pause);
        if let Some(e) = g.damage() {
            return Err(layout_error(py, "attach", e));
        }
        g.check()
            .map_err(|c| raise(py, Exc::Corruption, format!("attach: {c}")))?;
    }
    Ok(pool)
}
