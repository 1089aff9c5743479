//! Shared pools for Python: `Pool.create_in(buffer, ...)` and `Pool.attach(buffer)` over the
//! core's [`SharedPool`].
//!
//! **Owners.** Every handle registers as an owner in the pool's owner table (the core's
//! `owners`): a free slot, whose robust, process-shared `pthread_mutex_t` a keeper thread of
//! the handle's process holds for the handle's life (`robust::Keeper`). The kernel marks that
//! mutex `FUTEX_OWNER_DIED` when the process dies, whatever its PID namespace, so "is this owner
//! alive" is a try of its mutex (`robust::SlotProbe`), never a pid read.
//!
//! **The lock.** An operation takes the pool's lock word with one compare-and-swap of 0 to its
//! owner's code (`OwnerId::code`: slot and generation) and releases it with one store. A waiter
//! that finds the word held spins a little, then polls with the interpreter lock let go,
//! answering signals and keeping the handle's timeout; at each poll it asks whether the holder
//! is gone ([`holder_gone`]: its slot's mutex free, or a code naming no live owner) and only
//! then takes the word over (recovering the journal, then reclaiming the dead owners'
//! references). A stopped holder's keeper still holds its mutex: it is never taken over.
//! Handles that are not owners yet (registering, opening) take the header's outer robust
//! mutex first and then the word with the value `REGISTRANT` ([`Registrant`]); the word is
//! taken from `REGISTRANT` only by a thread holding that mutex (the registrant died), so that
//! a dead registrant's value and a live one's cannot be told apart by mistake.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pagebuddy::owners::{OwnerId, DEFAULT_OWNER_SLOTS, MAX_OWNER_SLOTS, REGISTRANT};
use pagebuddy::shmlock::OuterLock;
use pagebuddy::{
    pages_that_fit_with, Config, Intrusive, LayoutError, LinkStore, SharedGuard, SharedLinks,
    SharedPool, SideTable, ZeroPolicy,
};
use pyo3::exceptions::{PyRuntimeError, PyTimeoutError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::close::{Gate, Held};
use crate::robust::{self, Keeper, Robust, SlotProbe};

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

/// Registered with `os.register_at_fork`: a child records its own pid in the owner word, and
/// its batch calls go on (`forking.rs`).
#[pyfunction]
pub(crate) fn _after_fork() {
    PID.store(std::process::id(), Ordering::Relaxed);
    crate::forking::forked();
}

/// For tests: the `n`th crash point of a shared pool's operations from now, in this process,
/// kills it with SIGKILL (0 disarms): a process stopped between two steps of an operation.
#[pyfunction]
pub(crate) fn _crash_after(n: u32) {
    pagebuddy::crash_points::arm(n, kill_self);
}

/// For tests: the `n`th crash point of a shared pool's operations from now, in this process,
/// stops it with SIGSTOP (0 disarms): a holder of the lock that is alive but does not run. It
/// goes on from there when it gets SIGCONT.
#[pyfunction]
pub(crate) fn _stop_after(n: u32) {
    pagebuddy::crash_points::arm(n, stop_self);
}

/// SIGSTOP to this process.
fn stop_self() {
    // SAFETY: kill(2) with this process's id and a signal number; it touches no memory.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGSTOP);
    }
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
    pub timeout: Option<&'a Bound<'py, PyAny>>,
    pub owners: Option<&'a Bound<'py, PyAny>>,
}

/// A shared pool and the lock its operations take first.
pub(crate) struct Shared<L: LinkStore + 'static> {
    pub(crate) pool: SharedPool<'static, L>,
    pub(crate) lock: Robust,
    pub(crate) me: Me,
}

/// The owner a handle is, in its process: registered at `create_in`/`attach`, and again by a
/// forked child at its first call (the parent's keeper thread does not exist there).
pub(crate) struct Me {
    /// `OwnerId::get()` of the owner.
    id: AtomicU64,
    /// The process that registered it (0: none yet).
    pid: AtomicU32,
    /// The thread holding the owner slot's mutex; touched only with the interpreter lock held
    /// (so no other thread holds this mutex when the process forks).
    keeper: Mutex<Option<Keeper>>,
}

impl Me {
    fn new() -> Self {
        Me {
            id: AtomicU64::new(0),
            pid: AtomicU32::new(0),
            keeper: Mutex::new(None),
        }
    }

    /// Ends the owner: its keeper lets the slot's mutex go, and the next reclaim drops its
    /// references. Called with the interpreter lock held.
    fn end(&self) {
        let keeper = self.keeper.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.pid.store(0, Ordering::Relaxed);
        drop(keeper);
    }

    /// This process's owner id, if it registered.
    #[inline]
    pub(crate) fn current(&self) -> Option<OwnerId> {
        (self.pid.load(Ordering::Relaxed) == pid()).then(|| {
            let id = self.id.load(Ordering::Relaxed);
            OwnerId {
                slot: id as u32,
                generation: (id >> 32) as u32,
            }
        })
    }
}

impl<L: SharedLinks<'static> + 'static> Shared<L> {
    /// This handle's owner id in this process, registering it first if it has none here (a
    /// forked child's first call): takes the pool's lock to do so.
    #[inline]
    pub(crate) fn owner(&self, py: Python<'_>) -> PyResult<OwnerId> {
        match self.me.current() {
            Some(id) => Ok(id),
            None => self.register(py, false),
        }
    }

    /// Registers this handle as a new owner (`reclaim`: dropping dead owners' references
    /// first, as `attach` does), under the pool's lock.
    #[cold]
    fn register(&self, py: Python<'_>, reclaim: bool) -> PyResult<OwnerId> {
        let outer = Registrant::new(py, &self.pool, &self.lock, "register an owner");
        let mut g = self.pool.lock_outer(&outer, REGISTRANT)?;
        let core = |e| crate::convert::error(py, "register an owner", e, None);
        if reclaim || g.taken_from_dead() {
            g.reclaim_dead(&SlotProbe, None).map_err(core)?;
        }
        let slot = g.free_slot(&SlotProbe).map_err(core)?.ok_or_else(|| {
            PyRuntimeError::new_err(format!(
                "the shared pool's {} owner slots are all held by live handles: close one, or \
                 format the pool with more (create_in(owners=N))",
                self.pool.owner_slots()
            ))
        })?;
        let area = self
            .pool
            .owner_lock_area(slot)
            .ok_or_else(|| PyRuntimeError::new_err("owner slot out of range"))?;
        let keeper = Keeper::hold(area).map_err(|errno| {
            raise(
                py,
                Exc::Corruption,
                format!("register an owner: slot {slot}'s lock is unusable (errno {errno})"),
            )
        })?;
        let id = g
            .enlist(slot, pid())
            .ok_or_else(|| PyRuntimeError::new_err("owner slot taken meanwhile"))?;
        drop(g);
        let mut k = self.me.keeper.lock().unwrap_or_else(|e| e.into_inner());
        *k = Some(keeper);
        self.me.id.store(id.get(), Ordering::Relaxed);
        self.me.pid.store(pid(), Ordering::Relaxed);
        Ok(id)
    }

    /// Takes the pool's lock word for the owner whose lock word value is `code`: at once if it
    /// is free, else waiting (spinning a little, then with the interpreter lock let go between
    /// polls, signals checked, up to the handle's timeout), and taking it over from a holder
    /// found gone ([`holder_gone`]). `true`: taken over (what the holder left half done was
    /// recovered; the dead owners' references are to be reclaimed).
    #[inline(always)]
    pub(crate) fn lock_word(
        &self,
        py: Python<'_>,
        code: u32,
        op: &'static str,
    ) -> PyResult<(SharedGuard<'_, 'static, L>, bool)> {
        match self.pool.try_lock_as(code) {
            Ok(g) => Ok((g, false)),
            Err(holder) => self.lock_slow(py, code, op, holder),
        }
    }

    #[cold]
    #[inline(never)]
    fn lock_slow(
        &self,
        py: Python<'_>,
        code: u32,
        op: &'static str,
        mut holder: u32,
    ) -> PyResult<(SharedGuard<'_, 'static, L>, bool)> {
        let mut waiting = Wait::new(self.lock.timeout());
        loop {
            if holder == REGISTRANT {
                // A registrant holds the outer mutex while the word holds REGISTRANT: the word
                // is taken over from a dead one only with that mutex held, so that no live
                // registrant can be putting REGISTRANT there meanwhile.
                if let robust::Try::Taken(_) = self.lock.try_lock() {
                    let got = self.pool.take_over_as(code, holder);
                    self.lock.unlock();
                    if let Some(g) = got {
                        return Ok((g, true));
                    }
                }
            } else if holder != code && holder_gone(&self.pool, holder) {
                if let Some(g) = self.pool.take_over_as(code, holder) {
                    return Ok((g, true));
                }
            }
            waiting.pause(py, op)?;
            match self.pool.try_lock_as(code) {
                Ok(g) => return Ok((g, false)),
                Err(h) => holder = h,
            }
        }
    }

    /// `Pool.reclaim_dead()`: drops the references of every owner found dead, as if each had put
    /// them: the pages given back.
    pub(crate) fn reclaim_dead(&self, py: Python<'_>) -> PyResult<u64> {
        let me = self.owner(py)?;
        let (mut g, _) = self.lock_word(py, me.code(), "reclaim_dead")?;
        g.reclaim_dead(&SlotProbe, Some(me))
            .map_err(|e| crate::convert::error(py, "reclaim_dead", e, None))
    }
}

impl<L: LinkStore + 'static> std::ops::Deref for Shared<L> {
    type Target = SharedPool<'static, L>;
    fn deref(&self) -> &Self::Target {
        &self.pool
    }
}

/// `timeout=`: None (wait for as long as it takes) or seconds, a finite number >= 0.
fn timeout_arg(t: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Duration>> {
    let Some(t) = t.filter(|t| !t.is_none()) else {
        return Ok(None);
    };
    if t.is_instance_of::<pyo3::types::PyBool>() {
        return Err(PyTypeError::new_err(
            "timeout must be None or a number of seconds, got a bool",
        ));
    }
    let secs: f64 = t.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "timeout must be None or a number of seconds, got {}",
            t.get_type()
                .name()
                .map_or_else(|_| "?".into(), |n| n.to_string())
        ))
    })?;
    if !(secs.is_finite() && (0.0..=1e9).contains(&secs)) {
        return Err(PyValueError::new_err(format!(
            "timeout must be a finite number of seconds in 0..=1e9, got {secs}"
        )));
    }
    Ok(Some(Duration::from_secs_f64(secs)))
}

/// The value of the header's boot word while one process initialises the lock.
const BOOT_BUSY: u64 = 1;

/// Makes sure the pool's lock was initialised during this boot of the machine; `check`: the
/// pool's checks to run first when it was not (the lock's state is left from an earlier boot,
/// or the pool was just formatted), with the boot word claimed so that no other process of
/// this boot uses the lock meanwhile. A refusal from `check` puts the word back as it was and
/// writes nothing else.
fn ready_for_this_boot<L: SharedLinks<'static>>(
    py: Python<'_>,
    op: &str,
    pool: &SharedPool<'static, L>,
    lock: &Robust,
    check: impl FnOnce() -> PyResult<()>,
) -> PyResult<()> {
    let me = robust::this_boot();
    let word = pool.boot_word();
    let start = Instant::now();
    loop {
        let seen = word.load(Ordering::Acquire);
        if seen == me {
            return Ok(());
        }
        if seen != BOOT_BUSY
            && word
                .compare_exchange(seen, BOOT_BUSY, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // No process of this boot has taken the lock: each would have found `me` here,
            // which only this claim leads to.
            if let Err(e) = check() {
                word.store(seen, Ordering::Release);
                return Err(e);
            }
            let mut slots = (0..pool.owner_slots()).filter_map(|s| pool.owner_lock_area(s));
            let inited = lock
                .init()
                .and_then(|()| slots.try_for_each(|a| Robust::slot(a).init()));
            if let Err(errno) = inited {
                word.store(seen, Ordering::Release);
                return Err(PyValueError::new_err(format!(
                    "{op}: the pool's lock cannot be initialised (errno {errno})"
                )));
            }
            word.store(me, Ordering::Release);
            return Ok(());
        }
        // Another process initialises the lock: wait for it, as for the lock itself.
        if lock.timeout().is_some_and(|t| start.elapsed() >= t) {
            return Err(PyTimeoutError::new_err(format!(
                "{op}: another process has been initialising the pool's lock for {:.3} s \
                 (timeout); a process killed while doing so leaves it so: format the buffer \
                 anew",
                start.elapsed().as_secs_f64()
            )));
        }
        py.detach(|| std::thread::sleep(Duration::from_millis(1)));
        py.check_signals()?;
    }
}

impl Pool {
    /// The buffer as a byte memoryview, pinned, with its address and length.
    /// The buffer as a byte memoryview, pinned, with its address and length, and this
    /// handle's claim on it (`mode`: "create" or "attach"; see `_arenas.claim`), made before
    /// anything is written: a buffer overlapping other pools' memory is refused untouched.
    fn shared_bytes<'py>(buffer: &Bound<'py, PyAny>, mode: &str) -> PyResult<SharedBytes<'py>> {
        let py = buffer.py();
        let bytes = Self::arena(py, Some(buffer), 0, false)?;
        let len: usize = bytes.getattr("nbytes")?.extract()?;
        if len == 0 {
            return Err(PyValueError::new_err("buffer is empty"));
        }
        let (pin, addr) = Self::export(&bytes, len)?;
        let claim = py
            .import("pagebuddy._arenas")?
            .call_method1("claim", (addr, len, "Pool", mode))?;
        Ok(SharedBytes {
            bytes,
            pin,
            claim,
            addr,
            len,
        })
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
        let timeout = timeout_arg(a.timeout)?;
        let slots = match a.owners {
            Some(o) => int_in(o, "owners", 1, u64::from(MAX_OWNER_SLOTS))? as u32,
            None => DEFAULT_OWNER_SLOTS,
        };
        let SharedBytes {
            bytes,
            pin,
            claim,
            addr,
            len,
        } = Self::shared_bytes(buffer, "create")?;
        let nr = pages_that_fit_with(len, page_size, intrusive, slots);
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
                let p = SharedPool::<Intrusive>::create_raw_with(ptr, len, config, pid(), slots)
                    .map_err(|e| layout_error(py, "create_in", e))?;
                Inner::SharedIntrusive(created(py, p, timeout)?)
            } else {
                let p = SharedPool::<SideTable>::create_raw_with(ptr, len, config, pid(), slots)
                    .map_err(|e| layout_error(py, "create_in", e))?;
                Inner::SharedSide(created(py, p, timeout)?)
            }
        };
        Self::from_shared(inner, pin, bytes, claim)
    }

    pub(crate) fn attach_impl(
        py: Python<'_>,
        buffer: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let timeout = timeout_arg(timeout)?;
        let SharedBytes {
            bytes,
            pin,
            claim,
            addr,
            len,
        } = Self::shared_bytes(buffer, "attach")?;
        let ptr = std::ptr::NonNull::new(addr as *mut u8)
            .ok_or_else(|| PyValueError::new_err("buffer has no memory"))?;
        // SAFETY: as in `create_in_impl`.
        let side = unsafe { SharedPool::<SideTable>::attach_raw(ptr, len, pid()) };
        let inner = match side {
            Ok(p) => Inner::SharedSide(opened(py, p, timeout)?),
            Err(LayoutError::LinkStore { intrusive: true }) => {
                // SAFETY: as above.
                let p = unsafe { SharedPool::<Intrusive>::attach_raw(ptr, len, pid()) }
                    .map_err(|e| layout_error(py, "attach", e))?;
                Inner::SharedIntrusive(opened(py, p, timeout)?)
            }
            Err(e) => return Err(layout_error(py, "attach", e)),
        };
        Self::from_shared(inner, pin, bytes, claim)
    }

    fn from_shared(
        inner: Inner,
        pin: Bound<'_, PyAny>,
        bytes: Bound<'_, PyAny>,
        claim: Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let (geo, pages_off) = match &inner {
            Inner::SharedSide(p) => (p.geometry(), p.pages_offset()),
            Inner::SharedIntrusive(p) => (p.geometry(), p.pages_offset()),
            _ => return Err(PyTypeError::new_err("not a shared pool")),
        };
        Ok(Pool {
            inner,
            // Several handles on one shared buffer are the point: a claim that other shared
            // handles on exactly this buffer may share (`_arenas.claim`).
            _claim: Held::new(claim.unbind()),
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

    /// `close()` of a shared pool: its owner ends.
    pub(crate) fn end_owner(&self) {
        match &self.inner {
            Inner::SharedSide(s) => s.me.end(),
            Inner::SharedIntrusive(s) => s.me.end(),
            _ => {}
        }
    }

    /// Whether the pool lives in a shared buffer.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self.inner, Inner::SharedSide(_) | Inner::SharedIntrusive(_))
    }
}

/// A shared buffer, ready to be formatted or opened.
struct SharedBytes<'py> {
    bytes: Bound<'py, PyAny>,
    pin: Bound<'py, PyAny>,
    claim: Bound<'py, PyAny>,
    addr: usize,
    len: usize,
}

/// Accounts the guard's operations to `me`, after dropping the references of the dead owners
/// when the pool's lock was taken from a holder that died.
#[inline(always)]
pub(crate) fn as_owner<L: SharedLinks<'static>>(
    g: &mut (SharedGuard<'_, 'static, L>, bool),
    me: OwnerId,
) {
    if g.1 {
        reclaim_at_takeover(&mut g.0, me);
    }
    g.0.account_to(Some(me));
}

#[cold]
#[inline(never)]
fn reclaim_at_takeover<L: SharedLinks<'static>>(g: &mut SharedGuard<'_, 'static, L>, me: OwnerId) {
    // A damaged pool fails the operation itself just after.
    let _ = g.reclaim_dead(&SlotProbe, Some(me));
}

/// A freshly formatted pool, with its lock initialised.
fn created<L: SharedLinks<'static> + 'static>(
    py: Python<'_>,
    pool: SharedPool<'static, L>,
    timeout: Option<Duration>,
) -> PyResult<Shared<L>> {
    let lock = Robust::new(pool.outer_lock_area(), timeout);
    ready_for_this_boot(py, "create_in", &pool, &lock, || Ok(()))?;
    let shared = Shared {
        pool,
        lock,
        me: Me::new(),
    };
    shared.register(py, false)?;
    Ok(shared)
}

/// A freshly attached pool: recovers what a dead holder left and checks every invariant under
/// the lock, keeping the recovery only if every check passed, or refuses with every byte as it
/// was.
fn opened<L: SharedLinks<'static> + 'static>(
    py: Python<'_>,
    pool: SharedPool<'static, L>,
    timeout: Option<Duration>,
) -> PyResult<Shared<L>> {
    let lock = Robust::new(pool.outer_lock_area(), timeout);
    let refused = |e| layout_error(py, "attach", e);
    let mut fresh = false;
    ready_for_this_boot(py, "attach", &pool, &lock, || {
        // The lock's state is from an earlier boot: no process holds it, and none of this boot
        // uses the pool until the boot word says so.
        fresh = true;
        match pool.open_outer(&Exclusive) {
            Ok(r) => r.map_err(refused),
            Err(never) => match never {},
        }
    })?;
    if !fresh {
        pool.open_outer(&Registrant::new(py, &pool, &lock, "attach"))?
            .map_err(refused)?;
    }
    let shared = Shared {
        pool,
        lock,
        me: Me::new(),
    };
    // Accepted: the dead owners' references are dropped, and this handle becomes an owner.
    shared.register(py, true)?;
    Ok(shared)
}

/// The outer lock of a pool whose boot word this process has claimed: no other process uses
/// the pool meanwhile.
struct Exclusive;

impl OuterLock for Exclusive {
    type Error = std::convert::Infallible;
    fn acquire(&self) -> Result<bool, Self::Error> {
        Ok(false)
    }
    fn release(&self) {}
}

/// The robust lock of a shared pool for one call, which waits (the interpreter lock released,
/// signals checked between short waits) up to the handle's timeout.
pub(crate) struct Waiting<'l> {
    lock: &'l Robust,
    op: &'static str,
}

impl<'l> Waiting<'l> {
    /// `_py` proves the interpreter lock held, which `acquire` lets go while it waits.
    pub(crate) fn new(_py: Python<'_>, lock: &'l Robust, op: &'static str) -> Self {
        Waiting { lock, op }
    }
}

impl OuterLock for Waiting<'_> {
    type Error = PyErr;

    #[inline]
    fn acquire(&self) -> PyResult<bool> {
        match self.lock.try_lock() {
            robust::Try::Taken(died) => Ok(died),
            robust::Try::Busy => self.wait(),
            robust::Try::Broken(errno) => Err(self.broken(errno)),
        }
    }

    #[inline]
    fn release(&self) {
        self.lock.unlock();
    }
}

impl Waiting<'_> {
    #[cold]
    #[inline(never)]
    fn wait(&self) -> PyResult<bool> {
        // SAFETY: `Waiting::new` proved the interpreter lock held by this thread, which keeps it
        // for the whole call but inside `detach`, whose closure does not touch Python.
        let py = unsafe { Python::assume_attached() };
        let start = Instant::now();
        loop {
            let slice = match self.lock.timeout() {
                Some(t) => {
                    let left = t.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        return Err(PyTimeoutError::new_err(format!(
                            "{}: the shared pool's lock is held by another thread or process \
                             (timeout={} s); nothing was changed",
                            self.op,
                            t.as_secs_f64()
                        )));
                    }
                    left.min(robust::SLICE)
                }
                None => robust::SLICE,
            };
            match py.detach(|| self.lock.lock_for(slice)) {
                robust::Try::Taken(died) => return Ok(died),
                robust::Try::Busy => {}
                robust::Try::Broken(errno) => return Err(self.broken(errno)),
            }
            py.check_signals()?;
        }
    }

    fn broken(&self, errno: i32) -> PyErr {
        // SAFETY: as in `wait`.
        let py = unsafe { Python::assume_attached() };
        raise(
            py,
            Exc::Corruption,
            format!(
                "{}: the shared pool's lock is unusable (errno {errno}): format the buffer anew",
                self.op
            ),
        )
    }
}

/// Whether the owner that the pool's lock word names as `holder` (not [`REGISTRANT`]) is gone:
/// its slot's mutex is free (its keeper died with its process, or let it go), or the value names
/// no live owner. A mutex taken to tell is let go at once. Once gone, an owner's value never
/// names a live holder again (its slot is reused only under a new generation), so a waiter may
/// act on the answer by a compare-and-swap of the word.
pub(crate) fn holder_gone<L: SharedLinks<'static>>(
    pool: &SharedPool<'static, L>,
    holder: u32,
) -> bool {
    let Some(area) = pool.holder_area(holder) else {
        return true;
    };
    let m = Robust::slot(area);
    match m.try_lock() {
        robust::Try::Taken(_) => {
            m.unlock();
            true
        }
        robust::Try::Busy => false,
        robust::Try::Broken(_) => true,
    }
}

/// A wait for the lock word: a few spins, then polls with the interpreter lock let go between
/// them, signals checked (Ctrl-C: KeyboardInterrupt, nothing changed) and the timeout kept.
struct Wait {
    start: Instant,
    polls: u32,
    timeout: Option<Duration>,
}

/// Polls spent spinning before a waiter lets the interpreter lock go.
const SPINS: u32 = 100;

impl Wait {
    fn new(timeout: Option<Duration>) -> Self {
        Wait {
            start: Instant::now(),
            polls: 0,
            timeout,
        }
    }

    fn pause(&mut self, py: Python<'_>, op: &str) -> PyResult<()> {
        self.polls = self.polls.saturating_add(1);
        if self.polls < SPINS {
            std::hint::spin_loop();
            return Ok(());
        }
        if let Some(t) = self.timeout {
            if self.start.elapsed() >= t {
                return Err(PyTimeoutError::new_err(format!(
                    "{op}: the shared pool's lock is held by another thread or process \
                     (timeout={} s); nothing was changed",
                    t.as_secs_f64()
                )));
            }
        }
        let nap = if self.polls < SPINS + 100 {
            Duration::from_micros(20)
        } else {
            Duration::from_micros(500)
        };
        py.detach(|| std::thread::sleep(nap));
        py.check_signals()
    }
}

/// The lock of a handle that is not an owner yet (registering, or opening the pool): the
/// pool's outer robust mutex, which serialises such handles and tells whether one died, and
/// then the lock word, holding [`REGISTRANT`], taken as any waiter takes it. Released, the
/// word goes back to what it held before (a refused `attach` leaves every byte as it was),
/// unless the pool's own release already freed it.
pub(crate) struct Registrant<'p, L: SharedLinks<'static>> {
    outer: Waiting<'p>,
    pool: &'p SharedPool<'static, L>,
    lock: &'p Robust,
    op: &'static str,
    stale: std::cell::Cell<u32>,
}

impl<'p, L: SharedLinks<'static>> Registrant<'p, L> {
    /// `py` proves the interpreter lock held, which `acquire` lets go while it waits.
    pub(crate) fn new(
        py: Python<'_>,
        pool: &'p SharedPool<'static, L>,
        lock: &'p Robust,
        op: &'static str,
    ) -> Self {
        Registrant {
            outer: Waiting::new(py, lock, op),
            pool,
            lock,
            op,
            stale: std::cell::Cell::new(0),
        }
    }
}

impl<L: SharedLinks<'static>> OuterLock for Registrant<'_, L> {
    type Error = PyErr;

    fn acquire(&self) -> PyResult<bool> {
        let mut died = self.outer.acquire()?;
        // SAFETY: `Registrant::new` proved the interpreter lock held by this thread, which
        // keeps it but inside `detach` (`Wait::pause`), whose closure does not touch Python.
        let py = unsafe { Python::assume_attached() };
        let word = self.pool.owner_word();
        let mut waiting = Wait::new(self.lock.timeout());
        loop {
            let holder = match word.try_lock(REGISTRANT) {
                Ok(()) => {
                    self.stale.set(0);
                    return Ok(died);
                }
                Err(h) => h,
            };
            // REGISTRANT with the outer mutex held by this thread: its registrant died.
            if holder == REGISTRANT
                || (holder_gone(self.pool, holder) && word.take_from(holder, REGISTRANT))
            {
                self.stale.set(holder);
                died = true;
                return Ok(died);
            }
            if let Err(e) = waiting.pause(py, self.op) {
                self.outer.release();
                return Err(e);
            }
        }
    }

    fn release(&self) {
        self.pool
            .owner_word()
            .take_from(REGISTRANT, self.stale.get());
        self.outer.release();
    }
}
