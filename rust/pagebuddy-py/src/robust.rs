//! The lock of a shared pool between processes: a robust, process-shared `pthread_mutex_t` in
//! the pool's header (the core's `OUTER_LOCK_BYTES`).
//!
//! Why this identity and not a pid: the kernel keeps, for every thread, a list of the robust
//! mutexes it holds; when the thread dies it marks each one's futex word `FUTEX_OWNER_DIED` and
//! wakes a waiter, which gets `EOWNERDEAD`. That test is made by the kernel on the dying thread
//! itself, so it holds whatever PID namespace the holder and the waiter are in, and a reused pid
//! cannot pass for the holder (no one reads a pid to decide). A stopped holder is alive: it
//! keeps the lock, and waiters wait (interruptibly, up to their timeout).
//!
//! A mutex's state is only meaningful during the boot that wrote it (a file-backed pool reopened
//! after a reboot may hold the futex word of a thread of the previous boot): the header's boot
//! word records which boot initialised the mutex, from the kernel's boot id, and a pool opened
//! during another boot has its mutex initialised anew (see `shared::ready_for_this_boot`).

use std::ptr::NonNull;
use std::sync::OnceLock;
use std::time::Duration;

use pagebuddy::owners::{Liveness, OWNER_LOCK_BYTES};
use pagebuddy::OUTER_LOCK_BYTES;

/// The longest a waiter waits before it looks at signals and its timeout again.
pub(crate) const SLICE: Duration = Duration::from_millis(20);

const _: () = assert!(std::mem::size_of::<libc::pthread_mutex_t>() <= OUTER_LOCK_BYTES);
const _: () = assert!(std::mem::align_of::<libc::pthread_mutex_t>() <= 8);
const _: () = assert!(std::mem::size_of::<libc::pthread_mutex_t>() <= OWNER_LOCK_BYTES);

/// What a try to take the lock found.
pub(crate) enum Try {
    /// Taken; `true` if its last holder died holding it (now marked consistent again).
    Taken(bool),
    /// Held by another thread (of this or another process).
    Busy,
    /// Unusable (`ENOTRECOVERABLE`, or bytes that are not a mutex): the errno.
    Broken(i32),
}

/// A handle's view of the pool's mutex, and how long its calls wait for it.
pub(crate) struct Robust {
    mutex: NonNull<libc::pthread_mutex_t>,
    timeout: Option<Duration>,
    /// The bytes kept for the mutex (`OUTER_LOCK_BYTES`, or an owner slot's `OWNER_LOCK_BYTES`).
    bytes: usize,
}

// SAFETY: the mutex lives in the shared buffer that the handle pins for its whole life, and a
// process-shared mutex is made to be used from any thread of any process.
unsafe impl Send for Robust {}
// SAFETY: as above: every operation on it is a pthread call made for concurrent use.
unsafe impl Sync for Robust {}

impl Robust {
    /// The mutex in the `OUTER_LOCK_BYTES` 8-aligned bytes at `area`, which the caller keeps
    /// valid for the handle's life.
    pub(crate) fn new(area: NonNull<u8>, timeout: Option<Duration>) -> Self {
        Robust {
            mutex: area.cast(),
            timeout,
            bytes: OUTER_LOCK_BYTES,
        }
    }

    /// The mutex of an owner slot, in the `OWNER_LOCK_BYTES` 8-aligned bytes at `area`
    /// (`SharedPool::owner_lock_area`), which the caller keeps valid while it uses the result.
    pub(crate) fn slot(area: NonNull<u8>) -> Self {
        Robust {
            mutex: area.cast(),
            timeout: None,
            bytes: OWNER_LOCK_BYTES,
        }
    }

    /// How long a call waits for the lock (None: as long as it takes).
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Initialises the mutex: robust, process-shared, of the normal kind (a holder of the same
    /// thread id in another PID namespace is not taken for the caller). Only for a caller that
    /// knows no one uses it: a pool just formatted, or one whose mutex is from an earlier boot.
    pub(crate) fn init(&self) -> Result<(), i32> {
        // SAFETY: `attr` is initialised before use and destroyed after; the mutex bytes are
        // valid, aligned and large enough (asserted above) and unused by anyone else (the
        // caller's claim of the boot word).
        unsafe {
            let mut attr = std::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
            let a = attr.as_mut_ptr();
            let mut r = libc::pthread_mutexattr_init(a);
            if r != 0 {
                return Err(r);
            }
            r = libc::pthread_mutexattr_setpshared(a, libc::PTHREAD_PROCESS_SHARED);
            if r == 0 {
                r = libc::pthread_mutexattr_setrobust(a, libc::PTHREAD_MUTEX_ROBUST);
            }
            if r == 0 {
                std::ptr::write_bytes(self.mutex.as_ptr().cast::<u8>(), 0, self.bytes);
                r = libc::pthread_mutex_init(self.mutex.as_ptr(), a);
            }
            libc::pthread_mutexattr_destroy(a);
            if r != 0 {
                return Err(r);
            }
            // Once taken and released, the bytes of a free mutex stay the same across every
            // later lock and unlock (glibc sets its count at the first lock): a refused attach,
            // which takes the lock to check the pool, then leaves every byte as it was.
            r = libc::pthread_mutex_lock(self.mutex.as_ptr());
            if r != 0 {
                return Err(r);
            }
            libc::pthread_mutex_unlock(self.mutex.as_ptr());
        }
        Ok(())
    }

    /// What a lock call returned, as a `Try`: a dead holder's mutex is made consistent.
    fn taken(&self, r: i32) -> Try {
        match r {
            0 => Try::Taken(false),
            libc::EOWNERDEAD => {
                // SAFETY: this thread holds the mutex (EOWNERDEAD returns it locked).
                let c = unsafe { libc::pthread_mutex_consistent(self.mutex.as_ptr()) };
                if c == 0 {
                    Try::Taken(true)
                } else {
                    self.unlock();
                    Try::Broken(c)
                }
            }
            libc::EBUSY | libc::ETIMEDOUT | libc::EINTR => Try::Busy,
            e => Try::Broken(e),
        }
    }

    /// Takes the mutex if it is free (or its holder died), without waiting.
    #[inline]
    pub(crate) fn try_lock(&self) -> Try {
        // SAFETY: the mutex bytes are valid for the handle's life (`new`) and were initialised
        // during this boot (`shared::ready_for_this_boot` ran before the handle was made).
        self.taken(unsafe { libc::pthread_mutex_trylock(self.mutex.as_ptr()) })
    }

    /// Takes the mutex, waiting up to `d`.
    pub(crate) fn lock_for(&self, d: Duration) -> Try {
        let mut now = std::mem::MaybeUninit::<libc::timespec>::uninit();
        // SAFETY: clock_gettime writes the timespec; CLOCK_REALTIME always exists.
        let mut t = unsafe {
            libc::clock_gettime(libc::CLOCK_REALTIME, now.as_mut_ptr());
            now.assume_init()
        };
        let ns = t.tv_nsec as i64 + i64::from(d.subsec_nanos());
        t.tv_sec += d.as_secs() as libc::time_t + (ns / 1_000_000_000) as libc::time_t;
        t.tv_nsec = (ns % 1_000_000_000) as _;
        // SAFETY: as in `try_lock`; `t` is a valid absolute time.
        self.taken(unsafe { libc::pthread_mutex_timedlock(self.mutex.as_ptr(), &t) })
    }

    /// Releases the mutex, which this thread holds.
    #[inline]
    pub(crate) fn unlock(&self) {
        // SAFETY: the caller's thread took the mutex (`try_lock` or `lock_for` returned
        // `Taken`), as a robust mutex requires of its unlocker.
        unsafe { libc::pthread_mutex_unlock(self.mutex.as_ptr()) };
    }
}

/// This boot of the machine, from the kernel's boot id (FNV-1a of its text): never 0 (a pool
/// just formatted) nor 1 (the boot word claimed). Where there is no boot id, 2.
pub(crate) fn this_boot() -> u64 {
    static BOOT: OnceLock<u64> = OnceLock::new();
    *BOOT.get_or_init(|| {
        let Ok(id) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") else {
            return 2;
        };
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for b in id.trim().bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h.max(2)
    })
}

/// Whether an owner is alive, by its slot's mutex: a live owner's keeper thread holds it, so a
/// try that takes it (free, or `EOWNERDEAD`: its holder died, whatever its PID namespace) finds
/// the owner ended, and then holds the mutex for the reclaim. Called only under the pool's lock
/// (the table's writers all hold it), by one thread, which releases what it took.
pub(crate) struct SlotProbe;

impl Liveness for SlotProbe {
    fn ended(&self, area: NonNull<u8>) -> bool {
        let m = Robust::slot(area);
        match m.try_lock() {
            Try::Taken(_) => true,
            Try::Busy => false,
            // Unusable bytes: no live keeper can hold such a mutex; made anew, and taken.
            Try::Broken(_) => m.init().is_ok() && matches!(m.try_lock(), Try::Taken(_)),
        }
    }

    fn release(&self, area: NonNull<u8>) {
        Robust::slot(area).unlock();
    }
}

/// The thread that holds an owner slot's mutex for a handle's life: robust mutexes belong to
/// threads, and the kernel marks this one's `FUTEX_OWNER_DIED` when the process dies. Dropped,
/// it lets the mutex go (the owner ended: the next reclaim drops its references).
pub(crate) struct Keeper {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The process the thread runs in: a forked child's copy has no thread behind it.
    pid: u32,
}

impl Keeper {
    /// Starts a thread that takes the mutex at `area` (an owner slot's, initialised during this
    /// boot, that no live thread holds) and holds it until the keeper is dropped; the caller
    /// keeps `area` valid until then. `Err(errno)`: not taken.
    pub(crate) fn hold(area: NonNull<u8>) -> Result<Keeper, i32> {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (tell, told) = std::sync::mpsc::channel::<i32>();
        let at = area.as_ptr() as usize;
        let thread = std::thread::Builder::new()
            .name("pagebuddy-owner".into())
            .spawn(move || {
                let Some(area) = NonNull::new(at as *mut u8) else {
                    let _ = tell.send(libc::EINVAL);
                    return;
                };
                let m = Robust::slot(area);
                // SAFETY: the mutex bytes are valid until the keeper is dropped (`hold`'s
                // caller), which joins this thread first.
                let r = unsafe { libc::pthread_mutex_lock(m.mutex.as_ptr()) };
                let r = match m.taken(r) {
                    Try::Taken(_) => 0,
                    Try::Busy => libc::EBUSY,
                    Try::Broken(e) => e,
                };
                let _ = tell.send(r);
                if r == 0 {
                    // Until the sender is dropped.
                    let _ = stopped.recv();
                    m.unlock();
                }
            })
            .map_err(|_| libc::EAGAIN)?;
        match told.recv() {
            Ok(0) => Ok(Keeper {
                stop: Some(stop),
                thread: Some(thread),
                pid: std::process::id(),
            }),
            Ok(e) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(libc::EAGAIN),
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if self.pid != std::process::id() {
            // A forked child's copy: the thread is the parent's, which holds the mutex still.
            std::mem::forget(self.stop.take());
            std::mem::forget(self.thread.take());
            return;
        }
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
