//! Python bindings: `pagebuddy._native.Pool`, a thin translation layer over the core's
//! [`LockedPool`]. Policy lives in the core; this file only converts arguments, results and
//! errors, and owns the memory the core borrows.

mod cached;
mod close;
mod convert;
mod fast;
mod forking;
mod reserve;
mod robust;
mod shared;

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

use pagebuddy::mapped::MappedSlice;
use pagebuddy::{
    Arena, CacheConfig, Config, Error, Geometry, Handoff, HandoffPool, Intrusive, Link, LinkStore,
    LockedPool, PageMeta, Pool as Core, SharedGuard, SideTable, ZeroPolicy,
};
use pyo3::exceptions::{PyMemoryError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use cached::Cache;
use close::{Gate, Held, OnClosed};
use convert::{choice, raise, unsigned, Exc, Int};

/// A plain pool: the interpreter lock is its lock. Calls hold it; a batch call hands the pool off
/// before it lets the interpreter lock go (`without_gil!`), so that a single call pays no atomic
/// read-modify-write, only a load that finds no handoff out (see `HandoffPool`).
type Plain<L> = HandoffPool<'static, L>;

/// The core pool, with links in a side table (the default) or in the free pages, or the same
/// behind per-CPU caches (`cpus=N`).
enum Inner {
    Side(Plain<SideTable<'static>>),
    Intrusive(Plain<Intrusive>),
    /// Per-CPU caches in front of the core (`cpus=N`); see `cached.rs`.
    Cached(Box<Cache>),
    /// A pool inside a shared buffer (`Pool.create_in`, `Pool.attach`); see `shared.rs`.
    SharedSide(shared::Shared<SideTable<'static>>),
    SharedIntrusive(shared::Shared<Intrusive>),
}

/// Runs `$body` on the core pool, under its lock, whatever its link store; on a cached pool,
/// `$cached` with the caches as `$c`. `$py` proves the interpreter lock held, the lock of a plain
/// pool. Every `$body` is the core's work alone: it never runs Python code. On a closed pool
/// it returns `OnClosed::on_closed()` from the enclosing function instead (`close.rs`).
///
/// A shared pool's lock is taken first: waiting for it lets the interpreter lock go, and a
/// timeout or an interrupt returns its error from the enclosing function (which returns a
/// `PyResult`). `with!(nowait ...)`: for a function that returns an `Option`, None at once
/// when the lock is held (the caller then takes the full path, which waits).
macro_rules! with {
    (nowait $self:expr, $py:expr, |$p:ident| $body:expr, |$c:ident| $cached:expr) => {
        with!(@ $self, $py, |$p| $body, |$c| $cached,
              |s, me| s.pool.try_lock_as(me.code()).map(|g| (g, false)), |_e| None)
    };
    ($self:expr, $py:expr, |$p:ident| $body:expr, |$c:ident| $cached:expr) => {
        with!(@ $self, $py, |$p| $body, |$c| $cached,
              |s, me| s.lock_word($py, me.code(), op_name!()), |e| Err(e))
    };
    (@ $self:expr, $py:expr, |$p:ident| $body:expr, |$c:ident| $cached:expr,
     |$s:ident, $me:ident| $acquire:expr, |$e:ident| $fail:expr) => {{
        if $self.is_closed() {
            return OnClosed::on_closed();
        }
        match &$self.inner {
            Inner::Side(l) => under_gil($py, l, |$p| $body),
            Inner::Intrusive(l) => under_gil($py, l, |$p| $body),
            Inner::Cached($c) => $cached,
            Inner::SharedSide($s) => {
                // Counted busy for `close`: the wait for the lock lets the interpreter lock go,
                // and the lock is in the buffer.
                let _busy = $self.gate.enter();
                let $me = match $s.owner($py) {
                    Ok(me) => me,
                    Err($e) => return $fail,
                };
                let mut g = match $acquire {
                    Ok(g) => g,
                    Err($e) => return $fail,
                };
                shared::as_owner(&mut g, $me);
                #[allow(unused_mut)]
                let mut f = |$p: &mut SharedGuard<'_, 'static, SideTable<'static>>| $body;
                f(&mut g.0)
            }
            Inner::SharedIntrusive($s) => {
                let _busy = $self.gate.enter();
                let $me = match $s.owner($py) {
                    Ok(me) => me,
                    Err($e) => return $fail,
                };
                let mut g = match $acquire {
                    Ok(g) => g,
                    Err($e) => return $fail,
                };
                shared::as_owner(&mut g, $me);
                #[allow(unused_mut)]
                let mut f = |$p: &mut SharedGuard<'_, 'static, Intrusive>| $body;
                f(&mut g.0)
            }
        }
    }};
}

/// The name of the calling method for a lock's errors: the shared pool's operations.
macro_rules! op_name {
    () => {
        "shared pool"
    };
}

/// `with!` for a batch call: `$body` runs with the interpreter lock released, so that other
/// threads run meanwhile. A plain pool is handed off first, under the interpreter lock, and the
/// handoff is dropped inside the closure, before the interpreter lock is taken back: a call that
/// waits for the handoff holds that lock. A fork waits until the pool is given back. A shared
/// pool's lock is taken first, as in `with!`
/// (the wait lets the interpreter lock go), and released inside the closure, by the thread that
/// took it.
macro_rules! without_gil {
    ($self:expr, $py:expr, |$p:ident| $body:expr, |$c:ident| $cached:expr) => {{
        if $self.is_closed() {
            return OnClosed::on_closed();
        }
        // Until the pool is given back, a fork waits (`forking.rs`).
        let _in_flight = forking::InFlight::enter($py);
        // Until its core work is done, `close` waits (`close.rs`).
        let busy = $self.gate.enter();
        match &$self.inner {
            Inner::Side(l) => {
                let handoff = hand_off($py, l);
                $py.detach(|| {
                    let _busy = busy;
                    let mut handoff = handoff;
                    handoff.with(|$p| $body)
                })
            }
            Inner::Intrusive(l) => {
                let handoff = hand_off($py, l);
                $py.detach(|| {
                    let _busy = busy;
                    let mut handoff = handoff;
                    handoff.with(|$p| $body)
                })
            }
            Inner::Cached($c) => $py.detach(|| {
                let _busy = busy;
                $cached
            }),
            Inner::SharedSide(s) => {
                let me = s.owner($py)?;
                let mut g = s.lock_word($py, me.code(), op_name!())?;
                shared::as_owner(&mut g, me);
                $py.detach(|| {
                    let _busy = busy;
                    let mut g = g;
                    #[allow(unused_mut)]
                    let mut f = |$p: &mut SharedGuard<'_, 'static, SideTable<'static>>| $body;
                    f(&mut g.0)
                })
            }
            Inner::SharedIntrusive(s) => {
                let me = s.owner($py)?;
                let mut g = s.lock_word($py, me.code(), op_name!())?;
                shared::as_owner(&mut g, me);
                $py.detach(|| {
                    let _busy = busy;
                    let mut g = g;
                    #[allow(unused_mut)]
                    let mut f = |$p: &mut SharedGuard<'_, 'static, Intrusive>| $body;
                    f(&mut g.0)
                })
            }
        }
    }};
}

/// Runs `f`, the core's work alone, on a plain pool, under the interpreter lock that `_py` proves
/// held.
fn under_gil<L: LinkStore, T>(
    _py: Python<'_>,
    pool: &Plain<L>,
    f: impl FnOnce(&mut Core<'static, L>) -> T,
) -> T {
    // SAFETY: the interpreter lock is the outer lock of every plain pool: every call on one is
    // made from Python, holding it (as `_py` proves here), and keeps it until `f` returns, since
    // `f` runs no Python code that could let it go.
    unsafe { pool.with_outer(f) }
}

/// Hands a plain pool off, under the interpreter lock that `_py` proves held, for a batch call to
/// run with that lock released.
fn hand_off<'p, L: LinkStore>(_py: Python<'_>, pool: &'p Plain<L>) -> Handoff<'p, 'static, L> {
    // SAFETY: as in `under_gil`; the lock is held until `hand_off` returns.
    unsafe { pool.hand_off() }
}

/// Metadata and links that the core borrows as `'static`; unmapped after the core is dropped.
struct Storage {
    meta: NonNull<[PageMeta]>,
    links: Option<NonNull<[Link]>>,
    /// The mappings `meta` and `links` point into, unmapped when the storage drops. `Pool`
    /// declares `inner` (the only borrower) before `storage`, so it has been dropped by then.
    _maps: (MappedSlice<PageMeta>, Option<MappedSlice<Link>>),
}

// SAFETY: `Storage` only unmaps its memory on drop; the core reaches it under its lock.
unsafe impl Send for Storage {}
// SAFETY: `Storage` itself is never read through `&self`.
unsafe impl Sync for Storage {}

/// A pool's memory besides its arena, all of it reserved before any is written (see
/// `reserve.rs`): the metadata, the side-table links (none with intrusive links) and the caches'
/// storage (with `cpus=N`).
struct Reserved {
    meta: MappedSlice<PageMeta>,
    links: Option<MappedSlice<Link>>,
    cache: Option<cached::Reserved>,
}

impl Reserved {
    /// Reserves for `n` pages; `MemoryError`, with nothing written, if any part can't be had.
    fn new(n: usize, side: bool, cpus: usize, cache: &CacheConfig) -> PyResult<Self> {
        Ok(Reserved {
            meta: reserve::mapped(n, true, &format!("metadata for {n} pages"))?,
            links: if side {
                Some(reserve::mapped(
                    n,
                    n <= reserve::HUGE_LINKS_MAX_PAGES,
                    &format!("free-list links for {n} pages"),
                )?)
            } else {
                None
            },
            cache: match cpus {
                0 => None,
                _ => Some(cached::Reserved::new(n, cpus, cache)?),
            },
        })
    }

    /// The metadata written (every page `PageMeta::INIT`) and, with the links (left zeroed: the
    /// side table is read only for pages on the free lists, whose links are written first, and
    /// every read is range-checked anyway), handed to a `Storage`; the caches' storage, for
    /// `Cache` to write.
    fn into_storage(mut self) -> (Storage, Option<cached::Reserved>) {
        self.meta.fill(PageMeta::INIT);
        let storage = Storage {
            meta: NonNull::from(self.meta.as_mut_slice()),
            links: self.links.as_mut().map(|l| NonNull::from(l.as_mut_slice())),
            _maps: (self.meta, self.links),
        };
        (storage, self.cache)
    }
}

/// The slice behind a pointer of a `Storage`, for the core to borrow.
///
/// # Safety
/// `ptr` comes from a `Storage`, is borrowed by nothing else, and outlives every use of the
/// result.
unsafe fn borrow<T>(ptr: NonNull<[T]>) -> &'static mut [T] {
    // SAFETY: `ptr` is a live, initialised slice in a mapping that `Storage` owns; the caller
    // promises exclusivity and that the mapping is unmapped (by `Storage`) only after the
    // borrow ends.
    unsafe { &mut *ptr.as_ptr() }
}

/// A buddy page allocator over an arena of ``nr_pages`` pages (pKVM's hyp_pool).
///
/// Page i of the arena has frame number base_pfn + i. A block of order k holds 2**k pages and
/// starts at a pfn divisible by 2**k. max_order caps the number of orders (the attribute holds
/// the effective number, min(cap, nr_pages.bit_length())). buffer is None (the pool owns a zeroed,
/// page-aligned arena) or any writable C-contiguous buffer of at least nr_pages * page_size bytes
/// that no live pool's arena overlaps (ValueError otherwise); the pool keeps it exported, and its
/// owner must not free, unmap or resize it behind the pool's back (numpy's refcheck=False) nor
/// write into it but through views of held blocks, while the pool or a view lives (README).
/// zero is "free" (zero blocks when freed, as pKVM), "alloc" (when allocated) or "never".
/// arena=False makes a pool of page numbers only (device memory, blocks of a file, block ids):
/// no bytes, links in the side table, zero "never"; 12 bytes of metadata a page.
/// A Pool may be shared between threads; batch calls release the GIL.
/// cpus=N (N >= 1) puts per-CPU caches of orders 0 to 3 in front of the pool (the core's
/// CachedPool): each Python thread allocates from and frees into its own slot (or the slot a
/// call names with cpu=), and only an empty cache (taking cache_batch blocks) or one above
/// cache_high (giving its cache_batch coldest back) takes the pool's lock. Cached blocks are free
/// (refcount 0) and count in free_pages; drain() and drain_all() give them back. With
/// cache_batch and cache_high both left out, each slot sizes itself from batch 16 and high 64 up
/// to high 2048, growing when refills and drains come close together, all caches together
/// holding at most nr_pages // 8 pages (cache_sizes() and cache_bound show it); either one
/// given fixes the sizes (the other at its default, 16 or 64).
/// close(), or the end of a ``with Pool(...) as pool:`` block, lets the buffer go at once.
/// max_pages=M (at least nr_pages, which may then be 0) gives the pool room to grow: metadata and
/// arena (buffer: M * page_size bytes) for M pages, the first nr_pages its initial range, the
/// rest nobody's until admit(pfn, order) adds them as external blocks, never coalesced;
/// reclaim(order) takes free blocks out (docs/grow.md).
#[pyclass(module = "pagebuddy._native", name = "Pool", frozen, weakref)]
pub struct Pool {
    // Field order is drop order: the core goes before the memory it borrows, and before its
    // claim on that memory ends.
    inner: Inner,
    _claim: Held,
    _storage: Option<Storage>,
    _export: Held,
    /// The arena as a byte memoryview; None for a pool without one.
    bytes: Py<PyAny>,
    geo: Geometry,
    zero: &'static str,
    /// Offset of page 0 in `bytes` (0 but for shared pools, whose header comes first).
    pages_off: usize,
    /// Closed or not, and the batch calls under way (`close.rs`).
    gate: Gate,
    /// Whether `__init__` ran: `Pool(...)` calls it once, after `new`; any later call is refused.
    initialised: AtomicBool,
}

impl Pool {
    /// The arena: `buffer`, or a new anonymous mapping, as a writable byte memoryview.
    ///
    /// The mapping is private where the platform has `MAP_PRIVATE`: reading a page never
    /// written maps the shared zero page instead of committing memory (a shared anonymous
    /// mapping commits every page read), so a large pool costs what it uses.
    ///
    /// With `huge`, a new mapping is advised for huge pages (`MADV_HUGEPAGE`, as the metadata
    /// and links get in `reserve::mapped`). Not for an intrusive pool: its links live in the
    /// head page of every free block, and each one written would commit the 2 MiB around it
    /// (a fresh 2^18-page pool, 512 MiB for its 256 heads instead of 1 MiB).
    fn arena<'py>(
        py: Python<'py>,
        buffer: Option<&Bound<'py, PyAny>>,
        need: usize,
        huge: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let owner = match buffer {
            Some(b) if !b.is_none() => b.clone(),
            _ => {
                let mmap = py.import("mmap")?;
                let kwargs = PyDict::new(py);
                if let Ok(private) = mmap.getattr("MAP_PRIVATE") {
                    kwargs.set_item("flags", private)?;
                }
                let map = mmap
                    .getattr("mmap")?
                    .call((-1, need), Some(&kwargs))
                    .map_err(|e| {
                        if e.is_instance_of::<PyOSError>(py) {
                            PyMemoryError::new_err(format!(
                                "cannot map an arena of {need} bytes: {e}"
                            ))
                        } else {
                            e
                        }
                    })?;
                // Advice only: a refusal (no transparent huge pages, another platform) leaves
                // the arena as it is.
                if let (true, Ok(advice)) = (huge, mmap.getattr("MADV_HUGEPAGE")) {
                    // Nothing to undo on refusal: the advice changes how pages are backed only.
                    let _refused = map.call_method1("madvise", (advice,)).is_err();
                }
                map
            }
        };
        let not_buffer = |what: &str| {
            PyTypeError::new_err(format!(
                "buffer must be a writable C-contiguous buffer (bytearray, mmap, numpy array, \
                 memoryview): {} {what}",
                owner
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        };
        let view = py
            .import("builtins")?
            .getattr("memoryview")?
            .call1((&owner,))
            .map_err(|_| not_buffer("does not export a buffer"))?;
        if view.getattr("readonly")?.is_truthy()? {
            return Err(not_buffer("is read-only"));
        }
        // Raw bytes written over Python object pointers would crash the interpreter later.
        if holds_objects(&view.getattr("format")?.extract::<String>()?) {
            return Err(not_buffer("holds Python objects"));
        }
        let bytes = view
            .call_method1("cast", ("B",))
            .map_err(|_| not_buffer("is not C-contiguous"))?;
        let have: usize = bytes.getattr("nbytes")?.extract()?;
        if have < need {
            return Err(PyValueError::new_err(format!(
                "buffer holds {have} bytes, the pool needs nr_pages * page_size = {need}"
            )));
        }
        Ok(bytes)
    }

    /// Pins `need` bytes of `bytes` with a buffer export (a ctypes array made `from_buffer`,
    /// which the limited API allows) and returns it with the address of the first byte.
    fn export<'py>(bytes: &Bound<'py, PyAny>, need: usize) -> PyResult<(Bound<'py, PyAny>, usize)> {
        let ctypes = bytes.py().import("ctypes")?;
        let mul = bytes.py().import("operator")?.getattr("mul")?;
        let array = mul.call1((ctypes.getattr("c_char")?, need))?;
        let pin = array.call_method1("from_buffer", (bytes,))?;
        let addr = ctypes.call_method1("addressof", (&pin,))?.extract()?;
        Ok((pin, addr))
    }

    fn build<L: LinkStore>(
        geo: &Config,
        addr: usize,
        meta: &'static mut [PageMeta],
        links: L,
    ) -> PyResult<Core<'static, L>> {
        let ptr = NonNull::new(addr as *mut u8)
            .ok_or_else(|| PyValueError::new_err("buffer has no memory"))?;
        // SAFETY: `addr` is the start of a writable buffer export of at least
        // max_pages * page_size bytes (`Pool::arena` and `Pool::export` checked both), held by the
        // `Pool` for as long as the core lives (`inner` is dropped before `_export`), which pins
        // the memory. The core writes only into free pages; Python writes into held ones through
        // views.
        let arena = unsafe { Arena::from_raw(ptr, geo.max_pages * geo.page_size) };
        Core::new(arena, meta, links, *geo).map_err(|e| match e {
            Error::Geometry(g) => convert::geometry_error(g, geo),
            e => PyValueError::new_err(format!("Pool: {e}")),
        })
    }

    /// `get_page` for the fast entry point (`fast.rs`): the core's call alone, on a pfn already
    /// read. `None` for any failure, which the full method then reports: a failed call changes
    /// nothing, so running it again there gives the same error.
    #[inline]
    fn try_get(&self, py: Python<'_>, pfn: u64) -> Option<()> {
        with!(nowait self, py, |p| p.get(pfn).ok(), |c| c.get(pfn).ok())
    }

    /// `put_page(pfn)` for the fast entry point, through this thread's slot on a cached pool; as
    /// `try_get`.
    #[inline]
    fn try_put(&self, py: Python<'_>, pfn: u64) -> Option<()> {
        let slot = self.cache().map_or(0, Cache::thread_slot);
        with!(nowait self, py, |p| p.put(pfn).ok(), |c| c.put(slot, pfn).ok())
    }

    /// `alloc_pages(order)` for the fast entry point, through this thread's slot on a cached
    /// pool; as `try_get` (an order out of range is a failure too).
    #[inline]
    fn try_alloc(&self, py: Python<'_>, order: u64) -> Option<u64> {
        let order = u32::try_from(order)
            .ok()
            .filter(|&o| o < self.geo.max_order)?;
        let slot = self.cache().map_or(0, Cache::thread_slot);
        with!(nowait self, py, |p| p.alloc(order).ok(), |c| c
            .alloc(slot, order)
            .ok())
    }

    /// The caches, on a cached pool.
    fn cache(&self) -> Option<&Cache> {
        match &self.inner {
            Inner::Cached(c) => Some(c),
            _ => None,
        }
    }

    /// The slot a call runs for (`cpu`, else this thread's); 0 on a pool without caches, which
    /// refuses any `cpu` but None (ValueError, in `pagebuddy._rules.msg_no_caches`'s words).
    #[inline]
    fn slot(&self, op: &str, cpu: Option<&Bound<'_, PyAny>>) -> PyResult<usize> {
        match self.cache() {
            Some(c) => c.slot(op, cpu),
            None => match cpu.filter(|c| !c.is_none()) {
                None => Ok(0),
                Some(c) => match Int::of(c, || format!("{op}: cpu"))? {
                    Int::Negative(t) => Err(PyValueError::new_err(format!(
                        "{op}: cpu must be >= 0, got {t}"
                    ))),
                    slot => Err(PyValueError::new_err(format!(
                        "{op}: cpu={} names a CPU slot, but this pool has no per-CPU caches \
                         (build it with cpus=N to use slots)",
                        slot.text()
                    ))),
                },
            },
        }
    }

    /// `Pool(..., arena=False)`: metadata and side-table links, nothing else.
    fn without_arena(
        py: Python<'_>,
        config: Config,
        geo: Geometry,
        zero: &'static str,
        cpus: usize,
        cache: CacheConfig,
    ) -> PyResult<Self> {
        let n = geo.nr_pages as usize;
        let (storage, caches) = Reserved::new(n, true, cpus, &cache)?.into_storage();
        let Some(links) = storage.links else {
            return Err(PyMemoryError::new_err(format!(
                "cannot allocate free-list links for {n} pages"
            )));
        };
        // SAFETY: as in `new`: `storage` owns both and outlives the core, their only borrower.
        let (meta, links) = unsafe { (borrow(storage.meta), SideTable::new(borrow(links))) };
        let pool = Core::without_arena(meta, links, config).map_err(|e| match e {
            Error::Geometry(g) => convert::geometry_error(g, &config),
            e => PyValueError::new_err(format!("Pool: {e}")),
        })?;
        let inner = match caches {
            None => Inner::Side(HandoffPool::new(pool)),
            Some(reserved) => Inner::Cached(Box::new(Cache::side(
                LockedPool::new(pool),
                reserved,
                n,
                cpus,
                cache,
            )?)),
        };
        Ok(Pool {
            inner,
            _claim: Held::new(py.None()),
            _storage: Some(storage),
            _export: Held::new(py.None()),
            bytes: py.None(),
            geo,
            zero,
            pages_off: 0,
            gate: Gate::new(),
            initialised: AtomicBool::new(false),
        })
    }

    fn page_error(
        &self,
        py: Python<'_>,
        op: &str,
        (err, page): (Error, Option<PageMeta>),
    ) -> PyErr {
        convert::error(py, op, err, page)
    }
}

/// Whether a buffer format (struct module syntax) has `O` items, Python object pointers. Field
/// names, written between colons in numpy's structured formats, are not items.
fn holds_objects(format: &str) -> bool {
    format
        .split(':')
        .step_by(2)
        .any(|items| items.contains('O'))
}

/// The text of `pagebuddy._rules.<name>("Pool")`, a message both pools share.
fn rule_text(py: Python<'_>, name: &str) -> PyResult<String> {
    py.import("pagebuddy._rules")?
        .call_method1(name, ("Pool",))?
        .extract()
}

/// The TypeError of a copy or pickle of a pool.
fn no_copy(py: Python<'_>) -> PyErr {
    match rule_text(py, "msg_no_copy") {
        Ok(text) => PyTypeError::new_err(text),
        Err(e) => e,
    }
}

/// Applies a page operation (`put`, `get`, `split`) to one pfn, translating errors.
macro_rules! page_op {
    ($self:expr, $py:expr, $op:literal, $pfn:expr, $method:ident) => {{
        let pfn = convert::pfn($op, $pfn)?;
        with!(
            $self,
            $py,
            |p| p.$method(pfn).map_err(|e| (e, p.page(pfn).ok())),
            |c| c.$method(pfn).map_err(|e| (e, c.page(pfn).ok()))
        )
        .map_err(|e| $self.page_error($py, $op, e))
    }};
}

#[pymethods]
impl Pool {
    #[new]
    #[pyo3(signature = (nr_pages, *args, **kwargs))]
    #[pyo3(
        text_signature = "(nr_pages, *, page_size=4096, base_pfn=0, reserved_pages=0, max_order=11, buffer=None, zero='free', arena=True, cpus=0, cache_batch=None, cache_high=None, max_pages=None)"
    )]
    fn new(
        py: Python<'_>,
        nr_pages: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        if !args.is_empty() {
            return Err(PyTypeError::new_err(format!(
                "Pool() takes 1 positional argument (nr_pages) but {} were given; the others \
                 are keyword-only",
                1 + args.len()
            )));
        }
        // Keywords are read by hand so that an explicit None is told apart from a missing one.
        let kwargs = match kwargs {
            Some(k) => k.copy()?,
            None => PyDict::new(py),
        };
        let arg = |key: &str| -> PyResult<Option<Bound<'_, PyAny>>> {
            let value = kwargs.get_item(key)?;
            if value.is_some() {
                kwargs.del_item(key)?;
            }
            Ok(value)
        };
        let (page_size, base_pfn, reserved_pages) =
            (arg("page_size")?, arg("base_pfn")?, arg("reserved_pages")?);
        let (max_order, buffer, zero, _links, arena) = (
            arg("max_order")?,
            arg("buffer")?,
            arg("zero")?,
            arg("_links")?,
            arg("arena")?,
        );
        let (cpus, cache_batch, cache_high) =
            (arg("cpus")?, arg("cache_batch")?, arg("cache_high")?);
        let max_pages = arg("max_pages")?;
        if let Some((key, _)) = kwargs.iter().next() {
            return Err(PyTypeError::new_err(format!(
                "Pool() got an unexpected keyword argument {}",
                key.repr()?
            )));
        }
        let (page_size, base_pfn, reserved_pages) = (
            page_size.as_ref(),
            base_pfn.as_ref(),
            reserved_pages.as_ref(),
        );
        let (max_order, buffer, zero, _links) = (
            max_order.as_ref(),
            buffer.as_ref(),
            zero.as_ref(),
            _links.as_ref(),
        );
        // Arguments are converted here; whether they make a pool is the core's rule.
        // Each argument in turn is converted, then the core's rules judge the shape so far
        // (later fields at their defaults), so the first bad argument is the one reported.
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let judge = |c: Config| {
            c.geometry()
                .map(|_| c)
                .map_err(|e| convert::geometry_error(e, &c))
        };
        let initial = size(unsigned(nr_pages, "nr_pages")?);
        let room = match max_pages.as_ref() {
            Some(m) if !m.is_none() => size(unsigned(m, "max_pages")?),
            _ => initial,
        };
        let mut shape = judge(Config::new(initial).max_pages(room))?;
        if let Some(ps) = page_size {
            shape = judge(shape.page_size(size(unsigned(ps, "page_size")?)))?;
        }
        if let Some(b) = base_pfn {
            shape = judge(shape.base_pfn(unsigned(b, "base_pfn")?))?;
        }
        if let Some(r) = reserved_pages {
            shape = judge(shape.reserved_pages(size(unsigned(r, "reserved_pages")?)))?;
        }
        if let Some(m) = max_order {
            // A cap past every pool's orders caps nothing: any huge one is u32::MAX.
            let cap = match Int::of(m, || "max_order")? {
                Int::Val(v) => u32::try_from(v).unwrap_or(u32::MAX),
                Int::Huge(_) => u32::MAX,
                small @ Int::Negative(_) => {
                    return Err(PyValueError::new_err(format!(
                        "max_order must be >= 1, got {}",
                        small.text()
                    )))
                }
            };
            shape = judge(shape.order_cap(cap))?;
        }
        let has_arena = match arena {
            Some(a) => convert::flag(&a, "arena")?,
            None => true,
        };
        let zero = match zero {
            Some(z) => choice(z, "zero", &["free", "alloc", "never"])?,
            None if has_arena => "free",
            None => "never",
        };
        let intrusive = match _links {
            Some(l) => choice(l, "_links", &["side", "intrusive"])? == "intrusive",
            None => false,
        };
        if !has_arena {
            convert::arena_less(zero, intrusive, buffer.is_some_and(|b| !b.is_none()))?;
        }
        let policy = match zero {
            "alloc" => ZeroPolicy::OnAlloc,
            "never" => ZeroPolicy::Never,
            _ => ZeroPolicy::OnFree,
        };
        let config = shape
            .zero(policy)
            // A pool-owned arena is a fresh anonymous mapping: it reads as zeros already.
            .prezeroed(!matches!(buffer, Some(b) if !b.is_none()));
        let geo = config
            .geometry()
            .map_err(|e| convert::geometry_error(e, &config))?;
        let (cpus, cache) =
            cached::settings(cpus.as_ref(), cache_batch.as_ref(), cache_high.as_ref())?;
        if !has_arena {
            return Self::without_arena(py, config, geo, zero, cpus, cache);
        }
        let size = geo
            .arena_bytes()
            .ok_or_else(|| PyValueError::new_err("nr_pages * page_size overflows"))?;
        let bytes = Self::arena(py, buffer, size, !intrusive)?;
        let (export, addr) = Self::export(&bytes, size)?;
        // Before the core writes to it: a buffer overlapping a live pool's arena is refused
        // (ValueError) and left as it was.
        let claim = py
            .import("pagebuddy._arenas")?
            .call_method1("claim", (addr, size, "Pool"))?;
        let n = geo.nr_pages as usize;
        let (storage, caches) = Reserved::new(n, !intrusive, cpus, &cache)?.into_storage();
        // SAFETY: `storage` owns the boxes and, declared after `inner` in `Pool`, outlives the
        // core, which is their only borrower (on error, the core is gone before `storage`).
        let meta = unsafe { borrow(storage.meta) };
        let inner = match storage.links {
            None => {
                let core = Self::build(&config, addr, meta, Intrusive)?;
                match caches {
                    None => Inner::Intrusive(HandoffPool::new(core)),
                    Some(reserved) => Inner::Cached(Box::new(Cache::intrusive(
                        LockedPool::new(core),
                        reserved,
                        n,
                        cpus,
                        cache,
                    )?)),
                }
            }
            Some(links) => {
                // SAFETY: as for `meta`.
                let links = SideTable::new(unsafe { borrow(links) });
                let core = Self::build(&config, addr, meta, links)?;
                match caches {
                    None => Inner::Side(HandoffPool::new(core)),
                    Some(reserved) => Inner::Cached(Box::new(Cache::side(
                        LockedPool::new(core),
                        reserved,
                        n,
                        cpus,
                        cache,
                    )?)),
                }
            }
        };
        Ok(Pool {
            inner,
            _storage: Some(storage),
            _claim: Held::new(claim.unbind()),
            _export: Held::new(export.unbind()),
            bytes: bytes.unbind(),
            geo,
            zero,
            pages_off: 0,
            gate: Gate::new(),
            initialised: AtomicBool::new(false),
        })
    }

    /// Formats ``buffer`` as a pool that lives entirely inside it and opens it.
    ///
    /// Pool.create_in(buffer, *, page_size=4096, base_pfn=0, reserved_pages=0, max_order=11,
    /// zero="free", links="side")
    ///
    /// The pool gets as many pages as fit after its header and metadata. Other processes open
    /// the same bytes with Pool.attach (a multiprocessing.shared_memory buffer, a shared mmap); a
    /// file mapping keeps the pool across restarts. Whatever the buffer held is overwritten.
    ///
    /// timeout: the most seconds each call of this handle waits for the pool's lock (None: as
    /// long as it takes) before it raises TimeoutError, nothing changed. Waiting lets other
    /// threads run and answers Ctrl-C with KeyboardInterrupt.
    ///
    /// owners: the owner table's slots (1 to 4096, default 32): how many handles (in any
    /// processes) may be open on the pool at once. Every handle is an owner (Pool.owner), and
    /// the references it takes are dropped once it is found dead (Pool.reclaim_dead).
    #[staticmethod]
    #[pyo3(signature = (buffer, *, page_size=None, base_pfn=None, reserved_pages=None, max_order=None, zero=None, links=None, timeout=None, owners=None))]
    #[pyo3(
        text_signature = "(buffer, *, page_size=4096, base_pfn=0, reserved_pages=0, max_order=11, zero='free', links='side', timeout=None, owners=32)"
    )]
    #[allow(clippy::too_many_arguments)]
    fn create_in(
        py: Python<'_>,
        buffer: &Bound<'_, PyAny>,
        page_size: Option<&Bound<'_, PyAny>>,
        base_pfn: Option<&Bound<'_, PyAny>>,
        reserved_pages: Option<&Bound<'_, PyAny>>,
        max_order: Option<&Bound<'_, PyAny>>,
        zero: Option<&Bound<'_, PyAny>>,
        links: Option<&Bound<'_, PyAny>>,
        timeout: Option<&Bound<'_, PyAny>>,
        owners: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let args = shared::CreateArgs {
            page_size,
            base_pfn,
            reserved_pages,
            max_order,
            zero,
            links,
            timeout,
            owners,
        };
        Self::create_in_impl(py, buffer, args)
    }

    /// Opens the pool that Pool.create_in formatted in ``buffer`` (in this or another process),
    /// without rebuilding it.
    ///
    /// An operation that a killed process left half done is rolled back first, and every
    /// invariant is checked. Raises ValueError for bytes that are not a pool or of another
    /// layout version or size, CorruptionError for damaged ones; refused bytes are left exactly
    /// as they were (a recovery is kept only once every check passed). timeout: as for
    /// Pool.create_in.
    /// The handle becomes an owner (Pool.owner); the references of owners found dead (their
    /// process killed, or their handle closed) are dropped first, as Pool.reclaim_dead does.
    #[staticmethod]
    #[pyo3(signature = (buffer, *, timeout=None))]
    fn attach(
        py: Python<'_>,
        buffer: &Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        Self::attach_impl(py, buffer, timeout)
    }

    /// Whether this pool lives in a shared buffer (Pool.create_in, Pool.attach).
    #[getter]
    fn shared(&self) -> bool {
        self.is_shared()
    }

    /// This handle's owner id in a shared pool (its slot in the low 32 bits, the slot's
    /// generation above), None for a pool that is not shared. A forked child's handle is a new
    /// owner: it registers at its first call (this one included).
    #[getter]
    fn owner(&self, py: Python<'_>) -> PyResult<Option<u64>> {
        if self.is_closed() {
            return Ok(None);
        }
        let _busy = self.gate.enter();
        Ok(Some(match &self.inner {
            Inner::SharedSide(s) => s.owner(py)?.get(),
            Inner::SharedIntrusive(s) => s.owner(py)?.get(),
            _ => return Ok(None),
        }))
    }

    /// Drops the references of every owner of this shared pool found dead (its process died,
    /// or its handle was closed), as if each had put them, and frees their slots: returns the
    /// pages given back to the free lists. A page another live owner took a reference to stays
    /// held. Raises ValueError on a pool that is not shared.
    fn reclaim_dead(&self, py: Python<'_>) -> PyResult<u64> {
        if self.is_closed() {
            return Err(PyValueError::new_err("reclaim_dead: the pool is closed"));
        }
        let _busy = self.gate.enter();
        match &self.inner {
            Inner::SharedSide(s) => s.reclaim_dead(py),
            Inner::SharedIntrusive(s) => s.reclaim_dead(py),
            _ => Err(PyValueError::new_err(
                "reclaim_dead: not a shared pool (only Pool.create_in and Pool.attach have owners)",
            )),
        }
    }

    /// The most seconds each call of this handle waits for a shared pool's lock (the timeout
    /// given to Pool.create_in or Pool.attach); None: as long as it takes, or not a shared pool.
    #[getter]
    fn timeout(&self) -> Option<f64> {
        match &self.inner {
            Inner::SharedSide(s) => s.lock.timeout(),
            Inner::SharedIntrusive(s) => s.lock.timeout(),
            _ => None,
        }
        .map(|t| t.as_secs_f64())
    }

    /// Allocates a block of 2**order pages and returns the pfn of its head.
    ///
    /// Takes the head of the first non-empty free list at or above ``order``, splitting it down.
    /// Raises ValueError for an order outside 0 to max_order - 1 and OutOfMemory when no block is free.
    /// On a cached pool (``cpus=N``) the block comes from slot ``cpu`` (default: this thread's).
    #[pyo3(signature = (order, *, cpu=None))]
    fn alloc_pages(
        &self,
        py: Python<'_>,
        order: &Bound<'_, PyAny>,
        cpu: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<u64> {
        self.live("alloc_pages")?;
        let order = convert::order("alloc_pages", order, self.geo.max_order)?;
        let slot = self.slot("alloc_pages", cpu)?;
        with!(
            self,
            py,
            |p| p.alloc(order).map_err(|e| (e, p.free_pages())),
            |c| c.alloc(slot, order).map_err(|e| (e, c.free_pages()))
        )
        .map_err(|(e, free)| match e {
            Error::OutOfMemory { .. } => raise(
                py,
                Exc::OutOfMemory,
                format!("alloc_pages: {e} (free pages: {free})"),
            ),
            e => convert::error(py, "alloc_pages", e, None),
        })
    }

    /// Drops one reference to a held page; at zero its block is freed and coalesced.
    ///
    /// Raises PageError for a pfn outside the pool or a page that is not held. On a cached pool
    /// (``cpus=N``) a block of orders 0 to 3 whose last reference is dropped goes to slot ``cpu``'s
    /// cache (default: this thread's).
    #[pyo3(signature = (pfn, *, cpu=None))]
    fn put_page(
        &self,
        py: Python<'_>,
        pfn: &Bound<'_, PyAny>,
        cpu: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.live("put_page")?;
        let pfn = convert::pfn("put_page", pfn)?;
        let slot = self.slot("put_page", cpu)?;
        with!(
            self,
            py,
            |p| p.put(pfn).map_err(|e| (e, p.page(pfn).ok())),
            |c| c.put(slot, pfn).map_err(|e| (e, c.page(pfn).ok()))
        )
        .map_err(|e| self.page_error(py, "put_page", e))
    }

    /// Takes one more reference to a held page.
    ///
    /// Raises PageError for a pfn outside the pool, a page not held, or a refcount at 65535.
    fn get_page(&self, py: Python<'_>, pfn: &Bound<'_, PyAny>) -> PyResult<()> {
        self.live("get_page")?;
        page_op!(self, py, "get_page", pfn, get)
    }

    /// Splits the held block headed by ``pfn`` into order-0 pages, each held once (the head keeps
    /// its refcount).
    fn split_page(&self, py: Python<'_>, pfn: &Bound<'_, PyAny>) -> PyResult<()> {
        self.live("split_page")?;
        page_op!(self, py, "split_page", pfn, split)
    }

    /// Allocates a contiguous run of exactly ``nr_pages`` pages and returns its first pfn; each
    /// page of the run is then held once and put on its own.
    ///
    /// Raises ValueError unless 1 <= nr_pages <= 2**(max_order - 1) and OutOfMemory when no
    /// block that holds the run is free; either way nothing changes.
    fn alloc_exact(&self, py: Python<'_>, nr_pages: &Bound<'_, PyAny>) -> PyResult<u64> {
        self.live("alloc_exact")?;
        let op = "alloc_exact";
        let max_pages = 1u64 << (self.geo.max_order - 1);
        let n = convert::run(op, nr_pages, max_pages)?;
        let slot = self.slot(op, None)?;
        with!(
            self,
            py,
            |p| p.alloc_exact(n).map_err(|e| (e, p.free_pages())),
            |c| c.alloc_exact(slot, n).map_err(|e| (e, c.free_pages()))
        )
        .map_err(|(e, free)| match e {
            Error::OutOfMemory { order } => raise(
                py,
                Exc::OutOfMemory,
                format!(
                    "{op}: out of memory: no free block of order >= {order} for a run of \
                         {n} pages (free pages: {free})"
                ),
            ),
            e => convert::error(py, op, e, None),
        })
    }

    /// The refcount of a page (0 for free pages and tail pages).
    fn page_count(&self, py: Python<'_>, pfn: &Bound<'_, PyAny>) -> PyResult<u16> {
        self.live("page_count")?;
        let pfn = convert::pfn("page_count", pfn)?;
        with!(self, py, |p| p.refcount(pfn).map_err(|e| (e, None)), |c| c
            .refcount(pfn)
            .map_err(|e| (e, None)))
        .map_err(|e| self.page_error(py, "page_count", e))
    }

    /// The free lists, one per order from 0 to max_order - 1, each head first (FIFO order).
    fn free_lists(&self, py: Python<'_>) -> PyResult<Vec<Vec<u64>>> {
        self.live("free_lists")?;
        let orders = 0..self.geo.max_order;
        Ok(with!(
            self,
            py,
            |p| orders.map(|k| p.free_list(k).collect()).collect(),
            |c| c.free_lists(self.geo.max_order)
        ))
    }

    /// Free blocks per order from 0 to max_order - 1, like a line of /proc/buddyinfo. On a
    /// cached pool (``cpus=N``) the blocks in the caches are not counted, as Linux leaves out
    /// its per-CPU lists: drain_all() first to count them.
    fn buddyinfo(&self, py: Python<'_>) -> PyResult<Vec<u32>> {
        self.live("buddyinfo")?;
        Ok(with!(self, py, |p| p.buddyinfo().to_vec(), |c| c.buddyinfo()))
    }

    /// Free pages, the largest free order and Linux's extfrag_index per order, computed from
    /// buddyinfo() as ``pagebuddy demo`` reports them (pagebuddy.Fragmentation).
    fn fragmentation<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.live("fragmentation")?;
        let blocks = self.buddyinfo(py)?;
        py.import("pagebuddy._frag")?
            .call_method1("fragmentation", (blocks,))
    }

    /// Lets the buffer go at once: the pool's hold on it (or on its own mapping) and its claim
    /// on that memory end, so its owner may mmap.close() it or give it to a new pool right
    /// away. Batch calls under way in other threads finish first. Closing again does nothing.
    ///
    /// Afterwards every method, and free_pages, raises ValueError saying the pool is closed;
    /// the geometry attributes, closed and repr() still answer. A view handed out before stays
    /// valid and keeps the buffer exported until it is released (del, view.release(), or
    /// ``with pool.view(pfn) as v:``); it is plain memory then, which no pool owns, as after
    /// the pool is collected. A shared pool's other handles are not affected.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.close_now(py)
    }

    /// Whether close() was called.
    #[getter]
    fn closed(&self) -> bool {
        self.is_closed()
    }

    /// ``with Pool(...) as pool:`` closes the pool at the end of the block.
    fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
        slf.get().live("__enter__")?;
        Ok(slf)
    }

    /// Closes the pool; an exception from the block goes on.
    #[pyo3(signature = (_exc_type, _exc, _tb))]
    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: &Bound<'_, PyAny>,
        _exc: &Bound<'_, PyAny>,
        _tb: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.close_now(py)
    }

    /// A writable memoryview of the held block headed by ``pfn`` (page_size << order bytes).
    ///
    /// The view keeps the arena alive, also after the pool is gone.
    fn view<'py>(&self, py: Python<'py>, pfn: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.live("view")?;
        if self.bytes.is_none(py) {
            return Err(PyTypeError::new_err(convert::MSG_NO_ARENA_VIEW));
        }
        let pfn = convert::pfn("view", pfn)?;
        let held = |page: Result<PageMeta, Error>| match page {
            Ok(m) if m.refcount > 0 => Ok(u32::from(m.order)),
            Ok(m) => Err((Error::NotHeld { pfn }, Some(m))),
            Err(e) => Err((e, None)),
        };
        let order = with!(self, py, |p| held(p.page(pfn)), |c| held(c.page(pfn)))
            .map_err(|e| self.page_error(py, "view", e))?;
        let off = self.pages_off + (pfn - self.geo.base_pfn) as usize * self.geo.page_size;
        let len = self.geo.page_size << order;
        convert::get_slice(self.bytes.bind(py), off, off + len)
    }

    /// Validates every invariant of the pool; raises CorruptionError naming the broken rule.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        self.live("check")?;
        with!(self, py, |p| p.check(), |c| c.check())
            .map_err(|c| raise(py, Exc::Corruption, format!("check: {c}")))
    }

    /// Allocates ``count`` blocks of ``order`` in one critical section, without the GIL.
    ///
    /// All or nothing: raises OutOfMemory, with nothing allocated, when
    /// ``count`` blocks cannot be had. Returns the pfns in allocation order: a list, or ``out``
    /// with them in its first ``count`` items when ``out`` is given, a writable array of 64-bit
    /// unsigned ints (``array('Q')``, numpy ``uint64``) of at least ``count`` items.
    ///
    /// On a cached pool (``cpus=N``) the blocks come from slot ``cpu`` (default: this thread's),
    /// one allocation after another; when one fails, those already taken are put back through
    /// the slot, the last first, and OutOfMemory says how many could be had.
    #[pyo3(signature = (order, count, *, out = None, cpu = None))]
    fn alloc_many<'py>(
        &self,
        py: Python<'py>,
        order: &Bound<'py, PyAny>,
        count: &Bound<'py, PyAny>,
        out: Option<&Bound<'py, PyAny>>,
        cpu: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.live("alloc_many")?;
        let pfns = self.alloc_many_vec(py, order, count, out, cpu)?;
        match out {
            Some(out) if !out.is_none() => {
                convert::write_u64s(out, &pfns)?;
                Ok(out.clone())
            }
            _ => Ok(pyo3::types::PyList::new(py, pfns)?.into_any()),
        }
    }

    /// Puts every pfn of an iterable, in one critical section, without the GIL.
    ///
    /// All or nothing: all elements are converted first (a non-int raises
    /// TypeError), then checked; the first that cannot be put raises PageError naming its index
    /// and nothing is put. An array of 64-bit unsigned ints (``array('Q')``, numpy ``uint64``) is
    /// read as it is, with no Python object per page.
    ///
    /// On a cached pool (``cpus=N``) freed blocks go to slot ``cpu`` (default: this thread's), after
    /// the same checks.
    #[pyo3(signature = (pfns, *, cpu = None))]
    fn put_many(
        &self,
        py: Python<'_>,
        pfns: &Bound<'_, PyAny>,
        cpu: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        self.live("put_many")?;
        match convert::read_u64s(pfns)? {
            Some(values) => {
                let slot = self.slot("put_many", cpu)?;
                self.put_many_u64(py, slot, &values)
            }
            None => self.put_many_iter(py, pfns, cpu),
        }
    }

    /// Free pages, in all blocks.
    #[getter]
    fn free_pages(&self, py: Python<'_>) -> PyResult<u32> {
        self.live("free_pages")?;
        Ok(with!(self, py, |p| p.free_pages(), |c| c.free_pages()))
    }

    /// Number of CPU slots with page caches (0: none, the exact pool).
    #[getter]
    fn cpus(&self) -> usize {
        self.cache().map_or(0, |c| c.cpus())
    }

    /// Blocks a cache takes from the pool when empty, and gives back when full.
    #[getter]
    fn cache_batch(&self) -> u32 {
        self.cache()
            .map_or(CacheConfig::new(), |c| c.config())
            .batch
    }

    /// Blocks a cache keeps per order before it gives its coldest back.
    #[getter]
    fn cache_high(&self) -> u32 {
        self.cache().map_or(CacheConfig::new(), |c| c.config()).high
    }

    /// Whether each slot sizes its cache by itself (``cache_batch`` and ``cache_high`` both
    /// left out): ``cache_batch`` and ``cache_high`` are then where a slot starts.
    #[getter]
    fn cache_auto(&self) -> bool {
        self.cache().is_some_and(|c| c.config().is_auto())
    }

    /// Pages all caches together may hold when they size themselves (``nr_pages // 8``, rounded
    /// down to a multiple of ``cpus``); None with fixed sizes or without caches.
    #[getter]
    fn cache_bound(&self) -> Option<u64> {
        self.cache().and_then(|c| c.bound())
    }

    /// Slot ``cpu``'s current ``(high, batch)`` (default: this thread's slot): the configured
    /// ones with fixed sizes, and those of ``cache_high``/``cache_batch`` without caches.
    #[pyo3(signature = (cpu=None))]
    fn cache_sizes(&self, cpu: Option<&Bound<'_, PyAny>>) -> PyResult<(u32, u32)> {
        let slot = self.slot("cache_sizes", cpu)?;
        Ok(self
            .cache()
            .map_or((CacheConfig::new().high, CacheConfig::new().batch), |c| {
                c.sizes(slot)
            }))
    }

    /// Returns every block cached in slot ``cpu`` (default: this thread's) to the pool, orders
    /// ascending, coldest first. Nothing to do on a pool without caches.
    #[pyo3(signature = (cpu=None))]
    fn drain(&self, py: Python<'_>, cpu: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        self.live("drain")?;
        let slot = self.slot("drain", cpu)?;
        // Again: converting `cpu` may have run Python code that closed the pool.
        self.live("drain")?;
        match self.cache() {
            Some(c) => c
                .drain(slot)
                .map_err(|e| convert::error(py, "drain", e, None)),
            None => Ok(()),
        }
    }

    /// Drains every slot in turn; afterwards the free lists hold every free page.
    fn drain_all(&self, py: Python<'_>) -> PyResult<()> {
        self.live("drain_all")?;
        match self.cache() {
            Some(c) => c
                .drain_all()
                .map_err(|e| convert::error(py, "drain_all", e, None)),
            None => Ok(()),
        }
    }

    /// Slot ``cpu``'s cached blocks (default: this thread's slot), one list per cached order,
    /// coldest first: the next allocation of an order takes the last of its list. Empty on a
    /// pool without caches.
    #[pyo3(signature = (cpu=None))]
    fn cache_contents(&self, cpu: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<Vec<u64>>> {
        self.live("cache_contents")?;
        let slot = self.slot("cache_contents", cpu)?;
        Ok(self.cache().map_or_else(Vec::new, |c| c.contents(slot)))
    }

    /// Number of pages the pool started with: its initial range (mainline's ``range_start`` to
    /// ``range_end``), where blocks coalesce.
    #[getter]
    // The constructor's `nr_pages` is the geometry's initial range; `Geometry::nr_pages` counts
    // every page the pool may cover (`max_pages` here).
    #[allow(clippy::misnamed_getters)]
    fn nr_pages(&self) -> u32 {
        self.geo.range_pages
    }

    /// Pages the pool may ever cover, from ``base_pfn``: its initial range and the room to admit
    /// blocks past it (``nr_pages`` unless given).
    #[getter]
    fn max_pages(&self) -> u32 {
        self.geo.nr_pages
    }

    /// Admits the free block of ``2**order`` pages at ``pfn``, which the pool does not cover (past
    /// its initial range, or reclaimed), as Android pKVM's ``hyp_pool_admit``. Past the initial
    /// range it is external: listed at ``order``, never coalesced. Zeroed per the zero policy.
    ///
    /// Raises ValueError for an order the pool cannot list, PageError for a pfn outside
    /// ``max_pages``, a misaligned block, one past the end or across the initial range's end,
    /// or one overlapping pages the pool covers; nothing changes. A cached pool drains every
    /// cache first.
    fn admit(
        &self,
        py: Python<'_>,
        pfn: &Bound<'_, PyAny>,
        order: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.live("admit")?;
        let pfn = convert::pfn("admit", pfn)?;
        let order = convert::order("admit", order, self.geo.max_order)?;
        with!(self, py, |p| p.admit(pfn, order), |c| c.admit(pfn, order))
            .map_err(|e| convert::error(py, "admit", e, None))
    }

    /// Takes one free block of ``2**order`` pages out of the pool and returns its pfn: the block
    /// ``alloc_pages(order)`` would hand out. Its pages are no longer the pool's (every call on
    /// them raises PageError) until admitted again.
    ///
    /// Raises ValueError for a bad order, OutOfMemory with no free block of that order or above,
    /// or when fewer than ``min_free_pages`` free pages would be left; nothing changes. A cached
    /// pool drains every cache first.
    fn reclaim(&self, py: Python<'_>, order: &Bound<'_, PyAny>) -> PyResult<u64> {
        self.live("reclaim")?;
        let order = convert::order("reclaim", order, self.geo.max_order)?;
        with!(self, py, |p| p.reclaim(order), |c| c.reclaim(order))
            .map_err(|e| convert::error(py, "reclaim", e, None))
    }

    /// ``count`` reclaims of ``order``, all or nothing; returns the pfns in the order the
    /// reclaims one by one take them.
    fn reclaim_many(
        &self,
        py: Python<'_>,
        order: &Bound<'_, PyAny>,
        count: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<u64>> {
        self.live("reclaim_many")?;
        let order = convert::order("reclaim_many", order, self.geo.max_order)?;
        let count = match Int::of(count, || "reclaim_many: count")? {
            Int::Val(v) => v,
            Int::Huge(_) => u64::MAX,
            Int::Negative(text) => {
                return Err(PyValueError::new_err(format!(
                    "reclaim_many: count must be >= 0, got {text}"
                )))
            }
        };
        // A pool has fewer blocks than pages: any count past that is refused alike.
        let mut out = vec![0u64; count.min(u64::from(self.geo.nr_pages) + 1) as usize];
        with!(self, py, |p| p.reclaim_many(order, &mut out), |c| c
            .reclaim_many(order, &mut out))
        .map_err(|e| convert::error(py, "reclaim_many", e, None))?;
        Ok(out)
    }

    /// How many blocks of ``order`` reclaims could take one after another now, the floor
    /// respected (Android's ``hyp_pool_reclaimable``); cached blocks are not counted.
    fn reclaimable(&self, py: Python<'_>, order: &Bound<'_, PyAny>) -> PyResult<u64> {
        self.live("reclaimable")?;
        let order = convert::order("reclaimable", order, self.geo.max_order)?;
        Ok(with!(self, py, |p| p.reclaimable(order), |c| c.reclaimable(order)))
    }

    /// Whether ``pfn`` is the pool's now: in its initial range or admitted, and not reclaimed.
    fn covers(&self, py: Python<'_>, pfn: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.live("covers")?;
        let pfn = match Int::of(pfn, || "covers: pfn")? {
            Int::Val(v) => v,
            _ => return Ok(false),
        };
        Ok(with!(self, py, |p| p.covers(pfn), |c| c.covers(pfn)))
    }

    /// Android's ``min_free_pages``: the free pages ``reclaim`` leaves (allocation may use them).
    #[getter]
    fn min_free_pages(&self, py: Python<'_>) -> PyResult<u32> {
        self.live("min_free_pages")?;
        Ok(with!(self, py, |p| p.min_free_pages(), |c| c.min_free_pages()))
    }

    /// Sets ``min_free_pages``: any int from 0 to 2**32 - 1 (ValueError otherwise).
    fn set_min_free_pages(&self, py: Python<'_>, pages: &Bound<'_, PyAny>) -> PyResult<()> {
        self.live("set_min_free_pages")?;
        let asked = Int::of(pages, || "set_min_free_pages: pages")?;
        let Some(pages) = asked.at_most(u64::from(u32::MAX)) else {
            return Err(PyValueError::new_err(format!(
                "set_min_free_pages: pages must be from 0 to {}, got {}",
                u32::MAX,
                asked.text()
            )));
        };
        let pages = pages as u32;
        with!(self, py, |p| p.set_min_free_pages(pages), |c| c
            .set_min_free_pages(pages));
        Ok(())
    }

    /// Frame number of the arena's first page.
    #[getter]
    fn base_pfn(&self) -> u64 {
        self.geo.base_pfn
    }

    /// Bytes per page.
    #[getter]
    fn page_size(&self) -> usize {
        self.geo.page_size
    }

    /// Number of orders: blocks have orders 0 to max_order - 1.
    #[getter]
    fn max_order(&self) -> u32 {
        self.geo.max_order
    }

    /// Pages that started held: the first ``reserved_pages`` pages.
    #[getter]
    fn reserved_pages(&self) -> u32 {
        self.geo.reserved_pages
    }

    /// Whether the pool has an arena (False for ``Pool(..., arena=False)``).
    #[getter(arena)]
    fn has_arena(&self, py: Python<'_>) -> bool {
        !self.bytes.is_none(py)
    }

    /// Bytes of per-page metadata and side-table links the pool keeps (4 + 8 a page, 4 with
    /// intrusive links), besides its arena; with caches, also their ``PageRef``s (4 a page) and
    /// slots.
    #[getter]
    fn metadata_bytes(&self) -> usize {
        let n = self.geo.nr_pages as usize;
        match self.inner {
            Inner::Side(_) => pagebuddy::meta_bytes(n) + pagebuddy::link_bytes(n),
            Inner::Intrusive(_) => pagebuddy::meta_bytes(n),
            Inner::Cached(ref c) => c.metadata_bytes(n),
            // The header, the metadata and the links: everything in the buffer before page 0.
            Inner::SharedSide(_) | Inner::SharedIntrusive(_) => self.pages_off,
        }
    }

    /// The zero policy: "free", "alloc" or "never".
    #[getter]
    fn zero(&self) -> &'static str {
        self.zero
    }

    /// A pool owns its arena and its pages: ``copy.copy`` raises TypeError.
    fn __copy__(&self, py: Python<'_>) -> PyResult<()> {
        Err(no_copy(py))
    }

    /// As ``__copy__``.
    fn __deepcopy__(&self, py: Python<'_>, _memo: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(no_copy(py))
    }

    /// A pool cannot be pickled (TypeError).
    fn __reduce_ex__(&self, py: Python<'_>, _protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(no_copy(py))
    }

    /// A pool is built once, by ``Pool(...)``, whose construction calls ``__init__`` once after
    /// ``new`` has built it: that call does nothing, and any later one raises TypeError. A slot,
    /// it has no signature of its own: ``inspect.signature(Pool)`` and ``help(Pool)`` show
    /// ``new``'s.
    #[pyo3(signature = (*_args, **_kwargs))]
    fn __init__(
        &self,
        py: Python<'_>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        // Relaxed: the flag guards nothing but itself; the swap is atomic whatever the order.
        if !self.initialised.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        Err(PyTypeError::new_err(rule_text(py, "msg_already_built")?))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let cache = match self.cache() {
            Some(c) => format!(
                ", cpus={}, cache_batch={}, cache_high={}",
                c.cpus(),
                c.config().batch,
                c.config().high
            ),
            None => String::new(),
        };
        let state = if self.is_closed() {
            "closed=True".to_string()
        } else {
            format!("free_pages={}", self.free_pages(py)?)
        };
        let room = if self.geo.nr_pages != self.geo.range_pages {
            format!(", max_pages={}", self.geo.nr_pages)
        } else {
            String::new()
        };
        Ok(format!(
            "Pool(nr_pages={}{room}, page_size={}, base_pfn={}, max_order={}, zero='{}'{cache}, \
             {state})",
            self.geo.range_pages,
            self.geo.page_size,
            self.geo.base_pfn,
            self.geo.max_order,
            self.zero
        ))
    }
}

impl Pool {
    /// `alloc_many` up to the pfns: the arguments checked (`order`, `count`, then `out`), the
    /// blocks allocated under the lock without the GIL, or the error raised.
    fn alloc_many_vec(
        &self,
        py: Python<'_>,
        order: &Bound<'_, PyAny>,
        count: &Bound<'_, PyAny>,
        out: Option<&Bound<'_, PyAny>>,
        cpu: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<u64>> {
        let order = convert::order("alloc_many", order, self.geo.max_order)?;
        let asked = Int::of(count, || "alloc_many: count")?;
        let count = match asked {
            Int::Val(v) => v,
            Int::Huge(_) => u64::MAX,
            Int::Negative(ref text) => {
                return Err(PyValueError::new_err(format!(
                    "alloc_many: count must be >= 0, got {text}"
                )))
            }
        };
        if let Some(out) = out.filter(|o| !o.is_none()) {
            convert::check_out("alloc_many", out, count)?;
        }
        // A pool has fewer blocks than pages, so any count past nr_pages is refused alike: the
        // buffer need not be larger than that.
        let len = count.min(u64::from(self.geo.nr_pages) + 1) as usize;
        let mut pfns = Vec::new();
        pfns.try_reserve_exact(len)
            .map_err(|_| PyMemoryError::new_err(format!("cannot allocate {len} pfns")))?;
        pfns.resize(len, 0);
        let slot = self.slot("alloc_many", cpu)?;
        let result = without_gil!(
            self,
            py,
            |p| p
                .alloc_many(order, &mut pfns)
                .map_err(|e| (e, p.capacity(order))),
            |c| c.alloc_many(slot, order, &mut pfns)
        );
        match result {
            Ok(()) => Ok(pfns),
            Err((Error::OutOfMemory { .. }, capacity)) => Err(raise(
                py,
                Exc::OutOfMemory,
                format!(
                    "alloc_many: out of memory: {} blocks of order {order} requested, \
                     {capacity} available",
                    asked.text()
                ),
            )),
            Err((e, _)) => Err(convert::error(py, "alloc_many", e, None)),
        }
    }

    /// `put_many` of an array of u64 pfns, read with no Python object per page.
    fn put_many_u64(&self, py: Python<'_>, slot: usize, pfns: &[u64]) -> PyResult<()> {
        let result = without_gil!(
            self,
            py,
            |p| p
                .put_many(pfns)
                .map_err(|e| (e, p.page(pfns[e.index]).ok())),
            |c| c
                .put_many(slot, pfns)
                .map_err(|e| (e, c.page(pfns[e.index]).ok()))
        );
        result.map_err(|(e, page)| {
            convert::error(py, &format!("put_many: pfns[{}]", e.index), e.error, page)
        })
    }

    /// `put_many` of any other iterable: each element converted as `operator.index` would.
    fn put_many_iter(
        &self,
        py: Python<'_>,
        pfns: &Bound<'_, PyAny>,
        cpu: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        // An int that no u64 holds is outside every pool. The core is handed the elements up to
        // the first such one, which stands as a pfn outside this pool (one always exists: a pool
        // has fewer than 2**32 pages), so that it names the first element that fails. Every
        // element is converted first all the same: a non-int anywhere raises TypeError.
        let outside = if self.geo.base_pfn > 0 {
            0
        } else {
            u64::from(self.geo.nr_pages)
        };
        let mut values = Vec::with_capacity(pfns.cast::<PyList>().map_or(0, |l| l.len()));
        let mut huge: Option<(usize, String)> = None;
        for (n, item) in pfns.try_iter()?.enumerate() {
            match Int::of(&item?, || format!("put_many: pfns[{n}]"))? {
                Int::Val(v) => values.push(v),
                big => {
                    huge.get_or_insert_with(|| (n, big.text()));
                    values.push(outside);
                }
            }
        }
        if let Some((n, _)) = huge {
            values.truncate(n + 1);
        }
        let pfns = values;
        let slot = self.slot("put_many", cpu)?;
        let result = without_gil!(
            self,
            py,
            |p| p
                .put_many(&pfns)
                .map_err(|e| (e, p.page(pfns[e.index]).ok())),
            |c| c
                .put_many(slot, &pfns)
                .map_err(|e| (e, c.page(pfns[e.index]).ok()))
        );
        result.map_err(|(e, page)| {
            let op = format!("put_many: pfns[{}]", e.index);
            match &huge {
                Some((n, text)) if *n == e.index => raise(
                    py,
                    Exc::Page,
                    format!("{op}: pfn {text} is outside the pool"),
                ),
                _ => convert::error(py, &op, e.error, page),
            }
        })
    }
}

/// The native half of pagebuddy; use it through the `pagebuddy` package.
///
/// `gil_used`: the interpreter lock is the lock of every plain pool (`under_gil`), so the module
/// must never run on an interpreter without one.
#[pymodule(gil_used = true)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Pool>()?;
    fast::install(&m.py().get_type::<Pool>())?;
    m.add_function(wrap_pyfunction!(shared::_after_fork, m)?)?;
    m.add_function(wrap_pyfunction!(shared::_crash_after, m)?)?;
    m.add_function(wrap_pyfunction!(shared::_stop_after, m)?)?;
    m.add_function(wrap_pyfunction!(forking::_before_fork, m)?)?;
    m.add_function(wrap_pyfunction!(forking::_after_fork_parent, m)?)?;
    // A fork waits until no batch call holds a pool (`forking.rs`); a forked child records its
    // own pid in shared pools' owner word, not its parent's.
    let after = m.getattr("_after_fork")?;
    let kwargs = PyDict::new(m.py());
    kwargs.set_item("before", m.getattr("_before_fork")?)?;
    kwargs.set_item("after_in_parent", m.getattr("_after_fork_parent")?)?;
    kwargs.set_item("after_in_child", after)?;
    m.py()
        .import("os")?
        .getattr("register_at_fork")?
        .call((), Some(&kwargs))?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
