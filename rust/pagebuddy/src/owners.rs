//! The owners of a shared pool, and which references each one holds.
//!
//! ```text
//! owners_off   the table: one undo record (64 bytes), then `slots` owner slots of
//!              OWNER_SLOT_BYTES each: the slot's lock bytes (OWNER_LOCK_BYTES), its
//!              generation, its state (free or live), the pid it was taken by (a record for
//!              tools), and OWNER_SHARES share entries (page, count)
//! tags_off     one 16-bit tag per page: the slot (+1) of the owner that holds the page's
//!              references, and a bit saying that other owners hold some too (their shares)
//! ```
//!
//! **Identity.** An owner is a slot and the slot's generation ([`OwnerId`]). Whether an owner
//! is alive is never read from a pid: each slot keeps bytes for a lock that the platform
//! releases, and marks, when its holder dies ([`Liveness`]; the Python bindings keep a robust,
//! process-shared `pthread_mutex_t` there, held for the handle's life by a thread of its
//! process, and the kernel marks it `FUTEX_OWNER_DIED` whatever PID namespace the holder was
//! in). A slot is reused only once its owner's references are all dropped, and its generation
//! goes up then, so an old id never names the new owner.
//!
//! **Accounting.** Every held page's references belong to owners: the page's tag names the
//! owner holding its *tag share* (the references not in any share entry), and an owner that
//! takes a reference to a page tagged with another owner records it in a share entry of its own
//! slot (the page, a count), which sets the tag's shared bit. So a page's refcount is its tag
//! share plus its share entries, and a page held by one owner (the common case) costs its tag
//! alone. A `put` takes the reference from the putter's own share first, then from the tag
//! share; when the tag share reaches zero while shares remain, one of them becomes the tag share.
//! Each change of more than one word is journaled in the undo record (one page's metadata, its
//! tag and one share entry), so a process killed inside it is rolled back by the next holder of
//! the lock.
//!
//! **Reclaim.** A dead owner's references are dropped as if it had put them
//! ([`SharedGuard::reclaim_dead`]): its share entries first, then every page it tags: a page
//! other owners share goes to one of them, a page only it held is freed (coalesced, zeroed by
//! the pool's policy). Each step is one journaled operation, and the slot is freed last: a
//! reclaim killed part way leaves the slot live and its lock marked dead again, and the next
//! reclaim finishes it.

use core::ptr::{addr_of_mut, NonNull};
use core::sync::atomic::{fence, AtomicU32, Ordering};

use crate::error::Error;
use crate::layout::{SharedGuard, SharedLinks, SharedPool};
use crate::store::PageMeta;

/// Owner slots a pool gets unless its creator says otherwise.
pub const DEFAULT_OWNER_SLOTS: u32 = 32;
/// Most owner slots a pool can have (the tag keeps 15 bits for the slot).
pub const MAX_OWNER_SLOTS: u32 = 4096;
/// Bytes of each slot kept for its lock (a robust `pthread_mutex_t`), 8-aligned.
pub const OWNER_LOCK_BYTES: usize = 48;
/// Share entries per owner: how many pages tagged with other owners one owner may hold
/// references to at once.
pub const OWNER_SHARES: usize = 16;
/// The tag's bit saying that share entries of other owners name the page.
const SHARED: u16 = 0x8000;
/// Slot states.
const FREE: u32 = 0;
const LIVE: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
struct Share {
    idx: u32,
    count: u16,
    _pad: u16,
}

const NO_SHARE: Share = Share {
    idx: 0,
    count: 0,
    _pad: 0,
};

#[repr(C)]
struct Slot {
    lock: [u64; OWNER_LOCK_BYTES / 8],
    generation: u32,
    state: u32,
    pid: u32,
    _pad: u32,
    shares: [Share; OWNER_SHARES],
}

/// The undo record of one accounting change: a page's old metadata and tag, and one share
/// entry's old value (`slot` is the slot + 1, 0 for none).
#[repr(C)]
#[derive(Clone, Copy)]
struct Undo {
    idx: u32,
    meta: PageMeta,
    tag: u16,
    slot: u16,
    k: u16,
    _pad: u16,
    share: Share,
}

/// Bytes before the first slot (the undo record, padded).
const TABLE_BYTES: usize = 64;
const _: () = assert!(core::mem::size_of::<Undo>() <= TABLE_BYTES);

/// Bytes of one owner slot.
pub const OWNER_SLOT_BYTES: usize = core::mem::size_of::<Slot>();
const _: () = assert!(OWNER_SLOT_BYTES.is_multiple_of(8));

/// Bytes of the owner table for `slots` slots.
///
/// ```
/// use pagebuddy::owners::{owner_table_bytes, OWNER_SLOT_BYTES};
/// assert_eq!(owner_table_bytes(2), 64 + 2 * OWNER_SLOT_BYTES);
/// ```
pub const fn owner_table_bytes(slots: u32) -> usize {
    TABLE_BYTES + slots as usize * OWNER_SLOT_BYTES
}

/// Bytes of the tags of `nr_pages` pages.
pub(crate) const fn tag_bytes(nr_pages: usize) -> usize {
    nr_pages.saturating_mul(2)
}

/// An owner of a shared pool: a slot of its owner table and the slot's generation when the
/// owner took it. As one number ([`get`](Self::get)): the generation in the high 32 bits.
///
/// ```
/// use pagebuddy::owners::OwnerId;
/// let id = OwnerId { slot: 3, generation: 2 };
/// assert_eq!(id.get(), (2 << 32) | 3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerId {
    /// The slot, from 0.
    pub slot: u32,
    /// How many owners the slot had before this one.
    pub generation: u32,
}

impl OwnerId {
    /// The id as one number.
    pub fn get(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.slot)
    }

    /// The value the pool's lock word holds while this owner holds the lock: the slot + 1 in
    /// the low 13 bits, the generation's low 19 bits above (never 0, never [`REGISTRANT`]).
    ///
    /// ```
    /// use pagebuddy::owners::OwnerId;
    /// assert_eq!(OwnerId { slot: 0, generation: 1 }.code(), 1 | 1 << 13);
    /// ```
    pub fn code(self) -> u32 {
        (self.slot + 1) | (self.generation & 0x7_ffff) << 13
    }
}

/// The lock word's value while a handle that is not an owner yet holds the lock (one
/// registering, or opening the pool): such a holder also holds the pool's outer lock, which
/// tells whether it is alive.
pub const REGISTRANT: u32 = u32::MAX;

/// How a reclaimer tells that the owner of a slot has ended, by the slot's lock bytes.
///
/// ```
/// use core::ptr::NonNull;
/// use pagebuddy::owners::Liveness;
///
/// /// Every owner is alive.
/// struct AllAlive;
/// impl Liveness for AllAlive {
///     fn ended(&self, _: NonNull<u8>) -> bool {
///         false
///     }
///     fn release(&self, _: NonNull<u8>) {}
/// }
/// assert!(!AllAlive.ended(NonNull::dangling()));
/// ```
pub trait Liveness {
    /// Whether the owner whose slot's lock bytes are at `area` has ended (died, or let its
    /// lock go); if so the caller now holds that lock, until [`release`](Self::release).
    fn ended(&self, area: NonNull<u8>) -> bool;
    /// Releases a lock that [`ended`](Self::ended) said true for.
    fn release(&self, area: NonNull<u8>);
}

/// Where a pool's owner table and tags are.
#[derive(Clone, Copy)]
pub(crate) struct Owners {
    table: NonNull<u8>,
    slots: u32,
    tags: NonNull<u16>,
    nr_pages: u32,
}

impl Owners {
    /// The table of `slots` slots at `table` and the tags of `nr_pages` pages at `tags`.
    ///
    /// # Safety
    /// Both regions are valid (8- and 2-aligned, of [`owner_table_bytes`] and [`tag_bytes`]
    /// bytes) for as long as the result is used, and reached only under the pool's lock.
    pub(crate) unsafe fn new(table: NonNull<u8>, slots: u32, tags: NonNull<u8>, n: u32) -> Self {
        Owners {
            table,
            slots,
            tags: tags.cast(),
            nr_pages: n,
        }
    }

    fn undo(&self) -> *mut Undo {
        self.table.as_ptr().cast()
    }

    /// Slot `s` (< `slots`).
    fn slot(&self, s: u32) -> *mut Slot {
        debug_assert!(s < self.slots);
        // SAFETY: `s < slots`, so the slot lies inside the table (`new`'s contract).
        unsafe {
            self.table
                .as_ptr()
                .add(TABLE_BYTES + s as usize * OWNER_SLOT_BYTES)
                .cast()
        }
    }

    fn tag(&self, idx: u32) -> u16 {
        if idx >= self.nr_pages {
            return 0;
        }
        // SAFETY: idx < nr_pages: inside the tags (`new`'s contract); the lock is held.
        unsafe { self.tags.as_ptr().add(idx as usize).read() }
    }

    fn set_tag(&self, idx: u32, tag: u16) {
        if idx < self.nr_pages {
            // SAFETY: as in `tag`.
            unsafe { self.tags.as_ptr().add(idx as usize).write(tag) }
        }
    }

    fn share(&self, s: u32, k: usize) -> Share {
        // SAFETY: `slot` vouches for the slot; k < OWNER_SHARES by every caller's loop.
        unsafe { addr_of_mut!((*self.slot(s)).shares[k]).read() }
    }

    fn set_share(&self, s: u32, k: usize, v: Share) {
        // SAFETY: as in `share`.
        unsafe { addr_of_mut!((*self.slot(s)).shares[k]).write(v) }
    }

    /// The sum of every share entry's count for page `idx`, and one entry that names it.
    fn shares_of(&self, idx: u32) -> (u32, Option<(u32, usize)>) {
        let (mut sum, mut one) = (0u32, None);
        for s in 0..self.slots {
            for k in 0..OWNER_SHARES {
                let e = self.share(s, k);
                if e.count > 0 && e.idx == idx {
                    sum += u32::from(e.count);
                    one.get_or_insert((s, k));
                }
            }
        }
        (sum, one)
    }

    /// Swaps the undo record's values with the ones in place: applied once it rolls the change
    /// back, applied again it puts the bytes back as they were.
    fn swap_undo(&self, meta: &mut [PageMeta]) {
        // SAFETY: the record lies at the start of the table; the lock is held.
        let u = unsafe { &mut *self.undo() };
        if let Some(m) = meta.get_mut(u.idx as usize) {
            core::mem::swap(m, &mut u.meta);
        }
        let tag = self.tag(u.idx);
        self.set_tag(u.idx, u.tag);
        u.tag = tag;
        if u.slot != 0 && u32::from(u.slot) <= self.slots && usize::from(u.k) < OWNER_SHARES {
            let (s, k) = (u32::from(u.slot) - 1, usize::from(u.k));
            let now = self.share(s, k);
            self.set_share(s, k, u.share);
            u.share = now;
        }
    }

    /// Whether the undo record names only pages, slots and entries of the pool.
    fn undo_in_range(&self) -> bool {
        // SAFETY: as in `swap_undo`; read only.
        let u = unsafe { *self.undo() };
        u.idx < self.nr_pages && u32::from(u.slot) <= self.slots && usize::from(u.k) < OWNER_SHARES
    }
}

/// State word bit: the undo record covers an accounting change in progress.
pub(crate) const ACCOUNTING: u32 = 16;

impl<'a, L: SharedLinks<'a>> SharedPool<'a, L> {
    /// How many owner slots the pool has.
    pub fn owner_slots(&self) -> u32 {
        self.owners().slots
    }

    /// The lock bytes of owner slot `slot` ([`OWNER_LOCK_BYTES`], 8-aligned; zero when the pool
    /// is formatted, never read or written by the pool itself), or None past the last slot.
    pub fn owner_lock_area(&self, slot: u32) -> Option<NonNull<u8>> {
        let o = self.owners();
        (slot < o.slots).then(|| {
            // SAFETY: the slot lies inside the table; the address of a field of it is non-null.
            unsafe { NonNull::new_unchecked(addr_of_mut!((*o.slot(slot)).lock).cast::<u8>()) }
        })
    }

    /// The lock bytes of the live owner that lock word value `code` ([`OwnerId::code`]) names,
    /// or None if it names no live owner (a slot out of range, free, or of another
    /// generation): such a holder is gone. Read without the pool's lock: a holder's slot does
    /// not change while it holds the lock, and a caller that acts on the answer does so by a
    /// compare-and-swap of the word that fails if the word changed.
    ///
    /// ```
    /// use pagebuddy::{Config, SharedPool, SideTable};
    ///
    /// let mut words = vec![0u64; (64 << 10) / 8];
    /// // SAFETY: u64s have no padding; the byte view covers exactly their memory.
    /// let bytes: &mut [u8] =
    ///     unsafe { core::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) };
    /// let n = pagebuddy::pages_that_fit(bytes.len(), 256, false);
    /// let pool = SharedPool::<SideTable>::create_in(bytes, Config::new(n).page_size(256), 1).unwrap();
    /// assert!(pool.holder_area(1).is_none(), "slot 0 is free");
    /// assert!(pool.holder_area(12345).is_none());
    /// ```
    pub fn holder_area(&self, code: u32) -> Option<NonNull<u8>> {
        let o = self.owners();
        let slot = (code & 0x1fff).checked_sub(1)?;
        if slot >= o.slots {
            return None;
        }
        let p = o.slot(slot);
        // SAFETY: slot < slots; the words are 4-aligned and read atomically.
        let (state, generation) = unsafe {
            (
                AtomicU32::from_ptr(addr_of_mut!((*p).state)).load(Ordering::Acquire),
                AtomicU32::from_ptr(addr_of_mut!((*p).generation)).load(Ordering::Acquire),
            )
        };
        (state == LIVE && generation & 0x7_ffff == code >> 13)
            .then(|| self.owner_lock_area(slot))
            .flatten()
    }

    /// Checks the undo record of an accounting change (with the state word's bit set): it names
    /// only the pool's pages, slots and entries.
    pub(crate) fn accounting_in_range(&self) -> bool {
        self.owners().undo_in_range()
    }

    /// Rolls an accounting change back (or, called again, forward: see `Owners::swap_undo`).
    pub(crate) fn swap_accounting(&self) {
        self.owners().swap_undo(self.meta_mut());
    }
}

impl<'a, L: SharedLinks<'a>> SharedGuard<'_, 'a, L> {
    /// Accounts the references this guard's operations take to `id` (which
    /// [`enlist`](Self::enlist) returned), or to no one (None: the pages' tags say no owner,
    /// and nothing reclaims them).
    pub fn account_to(&mut self, id: Option<OwnerId>) {
        self.set_acct(match id {
            Some(id) if id.slot < self.shared().owners().slots => id.slot as u16 + 1,
            _ => 0,
        });
    }

    /// A free owner slot, reclaiming the dead owners' slots (see
    /// [`reclaim_dead`](Self::reclaim_dead)) if none is free. None: every slot's owner is alive.
    pub fn free_slot(&mut self, probe: &impl Liveness) -> Result<Option<u32>, Error> {
        let o = self.shared().owners();
        let find = || {
            (0..o.slots).find(|&s| {
                // SAFETY: s < slots; the lock is held.
                unsafe { addr_of_mut!((*o.slot(s)).state).read() == FREE }
            })
        };
        if let Some(s) = find() {
            return Ok(Some(s));
        }
        self.reclaim_dead(probe, None)?;
        Ok(find())
    }

    /// Makes free slot `slot` (from [`free_slot`](Self::free_slot), its lock now held for the
    /// new owner) live, for process `pid` (a record): the new owner's id. None if the slot is
    /// not a free one.
    pub fn enlist(&mut self, slot: u32, pid: u32) -> Option<OwnerId> {
        let o = self.shared().owners();
        if slot >= o.slots {
            return None;
        }
        let p = o.slot(slot);
        // SAFETY: slot < slots; the lock is held.
        unsafe {
            if addr_of_mut!((*p).state).read() != FREE {
                return None;
            }
            for k in 0..OWNER_SHARES {
                o.set_share(slot, k, NO_SHARE);
            }
            addr_of_mut!((*p).pid).write(pid);
            AtomicU32::from_ptr(addr_of_mut!((*p).state)).store(LIVE, Ordering::Release);
            Some(OwnerId {
                slot,
                generation: addr_of_mut!((*p).generation).read(),
            })
        }
    }

    /// Whether `id` names the live owner of its slot now (a stale id, whose slot was reclaimed
    /// and maybe taken again, does not).
    pub fn is_current(&self, id: OwnerId) -> bool {
        let o = self.shared().owners();
        if id.slot >= o.slots {
            return false;
        }
        let p = o.slot(id.slot);
        // SAFETY: slot < slots; the lock is held.
        unsafe {
            addr_of_mut!((*p).state).read() == LIVE
                && addr_of_mut!((*p).generation).read() == id.generation
        }
    }

    /// Drops the references of every live slot's owner that `probe` says has ended, but
    /// `me`'s, as if each had put them, and frees their slots: the pages given back to the free
    /// lists. See the [module documentation](crate::owners).
    ///
    /// Two owners of a pool of 4 slots ([`create_raw_with`](SharedPool::create_raw_with)),
    /// registered ([`free_slot`](Self::free_slot), [`enlist`](Self::enlist)); owner `a` dies,
    /// and its references go, but for the page `b` shares:
    ///
    /// ```
    /// use core::cell::Cell;
    /// use core::ptr::NonNull;
    /// use pagebuddy::owners::Liveness;
    /// use pagebuddy::shmlock::OuterLock;
    /// use pagebuddy::{Config, SharedPool, SideTable};
    ///
    /// /// The owner whose slot's lock bytes are at `dead` has ended.
    /// struct Probe(Cell<Option<NonNull<u8>>>);
    /// impl Liveness for Probe {
    ///     fn ended(&self, area: NonNull<u8>) -> bool {
    ///         self.0.get() == Some(area)
    ///     }
    ///     fn release(&self, _: NonNull<u8>) {}
    /// }
    /// struct Free;
    /// impl OuterLock for Free {
    ///     type Error = ();
    ///     fn acquire(&self) -> Result<bool, ()> { Ok(false) }
    ///     fn release(&self) {}
    /// }
    /// let mut words = vec![0u64; (64 << 10) / 8];
    /// let len = words.len() * 8;
    /// let n = pagebuddy::pages_that_fit_with(len, 256, false, 4);
    /// let ptr = NonNull::new(words.as_mut_ptr().cast::<u8>()).unwrap();
    /// // SAFETY: `words` outlives the pool and is reached only through it.
    /// let pool = unsafe {
    ///     SharedPool::<SideTable>::create_raw_with(ptr, len, Config::new(n).page_size(256), 1, 4)
    /// }
    /// .unwrap();
    /// assert_eq!(pool.owner_slots(), 4);
    /// let probe = Probe(Cell::new(None));
    /// let mut g = pool.lock_outer(&Free, 1).unwrap();
    /// let a = g.free_slot(&probe).unwrap().unwrap();
    /// let a = g.enlist(a, 100).unwrap();
    /// let b = g.free_slot(&probe).unwrap().unwrap();
    /// let b = g.enlist(b, 200).unwrap();
    /// g.account_to(Some(a));
    /// let (only_a, shared) = (g.alloc(2).unwrap(), g.alloc(0).unwrap());
    /// g.account_to(Some(b));
    /// g.get(shared).unwrap();
    /// probe.0.set(pool.owner_lock_area(a.slot));
    /// assert_eq!(g.reclaim_dead(&probe, Some(b)), Ok(4));
    /// assert!(!g.is_current(a) && g.is_current(b));
    /// assert_eq!(g.page(only_a).unwrap().refcount, 0);
    /// assert_eq!(g.page(shared).unwrap().refcount, 1, "b's reference");
    /// g.put(shared).unwrap();
    /// assert_eq!(g.free_pages() as usize, n);
    /// ```
    pub fn reclaim_dead(
        &mut self,
        probe: &impl Liveness,
        me: Option<OwnerId>,
    ) -> Result<u64, Error> {
        self.usable_now()?;
        let o = self.shared().owners();
        let mut freed = 0u64;
        for s in 0..o.slots {
            if me.is_some_and(|m| m.slot == s) {
                continue;
            }
            let p = o.slot(s);
            // SAFETY: s < slots; the lock is held.
            if unsafe { addr_of_mut!((*p).state).read() } != LIVE {
                continue;
            }
            let Some(area) = self.shared().owner_lock_area(s) else {
                continue;
            };
            if !probe.ended(area) {
                continue;
            }
            let r = self.reclaim_slot(s);
            probe.release(area);
            freed += r?;
        }
        Ok(freed)
    }

    /// Drops every reference of slot `s`'s owner and frees the slot: the pages freed.
    fn reclaim_slot(&mut self, s: u32) -> Result<u64, Error> {
        let o = self.shared().owners();
        let tag = s as u16 + 1;
        for k in 0..OWNER_SHARES {
            let e = o.share(s, k);
            if e.count == 0 {
                continue;
            }
            let meta = self.shared().meta_mut();
            let Some(&m) = meta.get(e.idx as usize) else {
                o.set_share(s, k, NO_SHARE);
                continue;
            };
            let left = m.refcount.checked_sub(e.count).filter(|&r| r > 0);
            let new_tag = self.shared_bit_after(e.idx, Some((s, k)));
            self.accounted(
                e.idx,
                |meta, o| {
                    meta.refcount = left.unwrap_or(meta.refcount);
                    o.set_share(s, k, NO_SHARE);
                    o.set_tag(e.idx, new_tag);
                },
                Some((s, k)),
            );
        }
        let mut freed = 0u64;
        let n = o.nr_pages;
        let mut idx = 0u32;
        while idx < n {
            let m = self.shared().meta_mut()[idx as usize];
            let t = o.tag(idx);
            let next = idx + 1;
            if m.refcount == 0 || t & !SHARED != tag {
                idx = next;
                continue;
            }
            let (sum, one) = o.shares_of(idx);
            match one {
                Some((s2, k2)) if t & SHARED != 0 => {
                    // Another owner shares the page: the dead owner's tag share is dropped and
                    // that owner's share becomes the tag share.
                    let share = u32::from(m.refcount).saturating_sub(sum);
                    let left = (u32::from(m.refcount) - share) as u16;
                    let rest = self.shared_bit_after(idx, Some((s2, k2)));
                    self.accounted(
                        idx,
                        |meta, o| {
                            if left > 0 {
                                meta.refcount = left;
                            }
                            o.set_share(s2, k2, NO_SHARE);
                            o.set_tag(idx, (s2 as u16 + 1) | (rest & SHARED));
                        },
                        Some((s2, k2)),
                    );
                }
                _ => {
                    // Only the dead owner holds it: one store (a restart finds refcount 1 and
                    // the same tag), then a journaled put frees it.
                    let order = u32::from(m.order);
                    self.shared().meta_mut()[idx as usize].refcount = 1;
                    let pfn = self.shared().geometry().pfn(idx);
                    self.put(pfn)?;
                    freed += 1u64 << order.min(63);
                }
            }
            idx = next;
        }
        let p = o.slot(s);
        // SAFETY: s < slots; the lock is held.
        unsafe {
            let g = AtomicU32::from_ptr(addr_of_mut!((*p).generation));
            g.store(g.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
            addr_of_mut!((*p).pid).write(0);
            AtomicU32::from_ptr(addr_of_mut!((*p).state)).store(FREE, Ordering::Release);
        }
        Ok(freed)
    }

    /// The tag of page `idx` (its owner bits as they are) with the shared bit as it will be once
    /// entry `gone` is dropped: set while another entry names the page.
    fn shared_bit_after(&self, idx: u32, gone: Option<(u32, usize)>) -> u16 {
        let o = self.shared().owners();
        let t = o.tag(idx) & !SHARED;
        for s in 0..o.slots {
            for k in 0..OWNER_SHARES {
                if Some((s, k)) == gone {
                    continue;
                }
                let e = o.share(s, k);
                if e.count > 0 && e.idx == idx {
                    return t | SHARED;
                }
            }
        }
        t
    }

    /// Runs `change` on page `idx`'s metadata and the owner table as one journaled accounting
    /// change covering the page's metadata and tag and share entry `entry`.
    fn accounted(
        &mut self,
        idx: u32,
        change: impl FnOnce(&mut PageMeta, &Owners),
        entry: Option<(u32, usize)>,
    ) {
        let shared = self.shared();
        let o = shared.owners();
        let meta = shared.meta_mut();
        let Some(m) = meta.get_mut(idx as usize) else {
            return;
        };
        let (slot, k, share) = match entry {
            Some((s, k)) => (s as u16 + 1, k as u16, o.share(s, k)),
            None => (0, 0, NO_SHARE),
        };
        // SAFETY: the record lies at the start of the table; the lock is held.
        unsafe {
            o.undo().write(Undo {
                idx,
                meta: *m,
                tag: o.tag(idx),
                slot,
                k,
                _pad: 0,
                share,
            })
        };
        let state: &AtomicU32 = shared.state();
        fence(Ordering::Release);
        state.store(
            state.load(Ordering::Relaxed) | ACCOUNTING,
            Ordering::Release,
        );
        fence(Ordering::Release);
        crate::layout::crash_point(false);
        change(m, &o);
        crate::layout::crash_point(false);
        fence(Ordering::Release);
        state.store(
            state.load(Ordering::Relaxed) & !ACCOUNTING,
            Ordering::Release,
        );
        crate::layout::crash_point(true);
    }

    /// Writes the tag of a block just allocated (or of the tails of a block just split): this
    /// guard's owner holds its only reference. Inside the operation's journal, before its commit:
    /// rolled back, the page is free and its tag means nothing.
    #[inline(always)]
    pub(crate) fn tag_taken(&self, idx: u32) {
        self.shared().owners().set_tag(idx, self.acct());
    }

    /// [`get`](Self::get) with the reference accounted to this guard's owner: one store of the
    /// refcount when the owner holds the page's tag share (or accounts to no one), else the
    /// owner's share entry for the page, taken or counted up, as one journaled change.
    pub(crate) fn get_accounted(&mut self, pfn: u64, idx: u32, m: PageMeta) -> Result<(), Error> {
        let o = self.shared().owners();
        let me = self.acct();
        let t = o.tag(idx);
        if me == 0 || t & !SHARED == me {
            return self.plain_get(pfn);
        }
        if m.refcount == u16::MAX {
            return Err(Error::RefcountOverflow { pfn });
        }
        let s = u32::from(me) - 1;
        let k = (0..OWNER_SHARES)
            .find(|&k| {
                let e = o.share(s, k);
                e.count > 0 && e.idx == idx
            })
            .or_else(|| (0..OWNER_SHARES).find(|&k| o.share(s, k).count == 0))
            .ok_or(Error::TooManyShares { pfn })?;
        let e = o.share(s, k);
        let count = if e.count > 0 { e.count + 1 } else { 1 };
        self.accounted(
            idx,
            |meta, o| {
                meta.refcount += 1;
                o.set_share(
                    s,
                    k,
                    Share {
                        idx,
                        count,
                        _pad: 0,
                    },
                );
                o.set_tag(idx, t | SHARED);
            },
            Some((s, k)),
        );
        Ok(())
    }

    /// Drops one of several references to page `idx` (refcount > 1): the putter's own share
    /// first, then the tag share; a tag share that reaches zero hands the tag to a share.
    pub(crate) fn put_accounted(&mut self, pfn: u64, idx: u32, m: PageMeta) -> Result<(), Error> {
        let o = self.shared().owners();
        let me = self.acct();
        let t = o.tag(idx);
        if t & SHARED == 0 {
            return self.plain_put(pfn);
        }
        let mine = match me {
            0 => None,
            me => {
                let s = u32::from(me) - 1;
                (0..OWNER_SHARES)
                    .find(|&k| {
                        let e = o.share(s, k);
                        e.count > 0 && e.idx == idx
                    })
                    .map(|k| (s, k))
            }
        };
        if let Some((s, k)) = mine {
            let e = o.share(s, k);
            let rest = if e.count > 1 {
                t
            } else {
                self.shared_bit_after(idx, Some((s, k)))
            };
            self.accounted(
                idx,
                |meta, o| {
                    meta.refcount -= 1;
                    o.set_share(
                        s,
                        k,
                        Share {
                            count: e.count - 1,
                            ..e
                        },
                    );
                    o.set_tag(idx, rest);
                },
                Some((s, k)),
            );
            return Ok(());
        }
        let (sum, one) = o.shares_of(idx);
        let tag_share = u32::from(m.refcount).saturating_sub(sum);
        match one {
            Some((s, k)) if tag_share <= 1 => {
                // The tag share is spent: the share entry becomes the tag share (if the tag
                // share was already empty, the reference comes from the entry).
                let rest = self.shared_bit_after(idx, Some((s, k)));
                self.accounted(
                    idx,
                    |meta, o| {
                        meta.refcount -= 1;
                        o.set_share(s, k, NO_SHARE);
                        o.set_tag(idx, (s as u16 + 1) | (rest & SHARED));
                    },
                    Some((s, k)),
                );
                Ok(())
            }
            Some(_) => self.plain_put(pfn),
            None => {
                // The bit was stale (no entry names the page): cleared with the put.
                self.accounted(
                    idx,
                    |meta, o| {
                        meta.refcount -= 1;
                        o.set_tag(idx, t & !SHARED);
                    },
                    None,
                );
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::vec::Vec;

    use super::*;
    use crate::config::Config;
    use crate::layout::tests_hook;
    use crate::shmlock::OuterLock;
    use crate::store::SideTable;

    const PS: usize = 256;

    /// Owners whose slot is in `dead` have ended; `held` records the locks a probe took.
    struct Probe {
        dead: Cell<u64>,
        base: *const u8,
    }

    impl Probe {
        fn slot_of(&self, area: NonNull<u8>) -> u32 {
            let off = area.as_ptr() as usize - self.base as usize;
            ((off - TABLE_BYTES) / OWNER_SLOT_BYTES) as u32
        }
    }

    impl Liveness for Probe {
        fn ended(&self, area: NonNull<u8>) -> bool {
            self.dead.get() & (1 << self.slot_of(area)) != 0
        }
        fn release(&self, _: NonNull<u8>) {}
    }

    struct Free;
    impl OuterLock for Free {
        type Error = ();
        fn acquire(&self) -> Result<bool, ()> {
            Ok(true)
        }
        fn release(&self) {}
    }

    fn buffer(len: usize) -> Vec<u64> {
        std::vec![0u64; len / 8]
    }

    fn bytes(v: &mut [u64]) -> &mut [u8] {
        // SAFETY: u64s have no padding; the byte view covers exactly their memory.
        unsafe { core::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len() * 8) }
    }

    /// Two owners register; A allocates, B shares one of A's pages and allocates its own; A
    /// dies: its unshared pages are freed, the shared one goes to B; B dies: all free.
    #[test]
    fn a_dead_owners_references_are_dropped() {
        let len = 64 << 10;
        let mut v = buffer(len);
        let b = bytes(&mut v);
        let n = crate::layout::pages_that_fit_with(len, PS, false, 4);
        // SAFETY: `v` outlives the pool and is reached only through it.
        let pool = unsafe {
            SharedPool::<SideTable>::create_raw_with(
                NonNull::from(&mut *b).cast(),
                len,
                Config::new(n).page_size(PS),
                1,
                4,
            )
        }
        .unwrap();
        let table = pool.owner_lock_area(0).unwrap().as_ptr() as usize - TABLE_BYTES;
        let probe = Probe {
            dead: Cell::new(0),
            base: table as *const u8,
        };
        let mut g = pool.lock_outer(&Free, 1).unwrap();
        let a = g.free_slot(&probe).unwrap().unwrap();
        let a = g.enlist(a, 10).unwrap();
        let bb = g.free_slot(&probe).unwrap().unwrap();
        let bb = g.enlist(bb, 11).unwrap();
        assert_ne!(a, bb);
        g.account_to(Some(a));
        let x = g.alloc(2).unwrap();
        let y = g.alloc(0).unwrap();
        g.get(y).unwrap();
        let z = g.alloc(1).unwrap();
        g.split(z).unwrap();
        g.account_to(Some(bb));
        g.get(x).unwrap();
        g.get(x).unwrap();
        let w = g.alloc(0).unwrap();
        g.get(y).unwrap();
        g.put(y).unwrap(); // B's own share first
        assert_eq!(g.page(y).map(|p| p.refcount), Ok(2));
        probe.dead.set(1 << a.slot);
        let freed = g.reclaim_dead(&probe, None).unwrap();
        assert_eq!(freed, 1 + 2, "y and z's two pages");
        assert_eq!(g.page(x).map(|p| p.refcount), Ok(2));
        assert_eq!(g.page(w).map(|p| p.refcount), Ok(1));
        assert!(!g.is_current(a));
        g.check().unwrap();
        // A's slot is free again, under a new generation.
        let a2 = g.free_slot(&probe).unwrap().unwrap();
        assert_eq!(a2, a.slot);
        let a2 = g.enlist(a2, 12).unwrap();
        assert_eq!(a2.generation, a.generation + 1);
        probe.dead.set(1 << bb.slot);
        assert_eq!(g.reclaim_dead(&probe, Some(a2)).unwrap(), 4 + 1);
        assert_eq!(g.free_pages() as usize, n);
        g.check().unwrap();
    }

    /// A reclaim killed at each of its crash points: the next lock (taking over) and reclaim
    /// finish it, and every page is free.
    #[test]
    fn a_reclaim_killed_at_every_step_is_finished_by_the_next() {
        let len = 32 << 10;
        let mut v = buffer(len);
        let b = bytes(&mut v);
        let base = b.as_mut_ptr();
        let n = crate::layout::pages_that_fit_with(len, PS, false, 2);
        // SAFETY: as above.
        let pool = unsafe {
            SharedPool::<SideTable>::create_raw_with(
                NonNull::from(&mut *b).cast(),
                len,
                Config::new(n).page_size(PS),
                1,
                2,
            )
        }
        .unwrap();
        let table = pool.owner_lock_area(0).unwrap().as_ptr() as usize - TABLE_BYTES;
        let alive = Probe {
            dead: Cell::new(0),
            base: table as *const u8,
        };
        let (a, bb) = {
            let mut g = pool.lock_outer(&Free, 1).unwrap();
            let a = g.free_slot(&alive).unwrap().unwrap();
            let a = g.enlist(a, 10).unwrap();
            let bb = g.free_slot(&alive).unwrap().unwrap();
            let bb = g.enlist(bb, 11).unwrap();
            g.account_to(Some(a));
            let x = g.alloc(1).unwrap();
            g.alloc(0).unwrap();
            g.get(x).unwrap();
            g.account_to(Some(bb));
            g.get(x).unwrap();
            (a, bb)
        };
        let snaps: Rc<RefCell<Vec<Vec<u8>>>> = Default::default();
        let sink = snaps.clone();
        // SAFETY (the hook): a read-only copy of the bytes between two steps of an operation.
        tests_hook::set(move |_| {
            sink.borrow_mut()
                .push(unsafe { core::slice::from_raw_parts(base, len) }.to_vec())
        });
        let both = Probe {
            dead: Cell::new((1 << a.slot) | (1 << bb.slot)),
            base: table as *const u8,
        };
        let freed = pool.lock_outer(&Free, 1).unwrap().reclaim_dead(&both, None);
        tests_hook::clear();
        assert_eq!(freed, Ok(3));
        let snaps = core::mem::take(&mut *snaps.borrow_mut());
        assert!(snaps.len() > 6, "{} crash points", snaps.len());
        for snap in &snaps {
            let mut w = buffer(len);
            let b = bytes(&mut w);
            b.copy_from_slice(snap);
            let ptr = NonNull::new(b.as_mut_ptr()).unwrap();
            // SAFETY: the bytes live until the end of the iteration; only this handle uses them.
            let p = unsafe { SharedPool::<SideTable>::attach_raw(ptr, len, 2) }.unwrap();
            let t = p.owner_lock_area(0).unwrap().as_ptr() as usize - TABLE_BYTES;
            let probe = Probe {
                dead: Cell::new(3),
                base: t as *const u8,
            };
            let mut g = p.lock_outer(&Free, 2).unwrap();
            assert_eq!(g.damage(), None);
            g.reclaim_dead(&probe, None).unwrap();
            g.check().unwrap();
            assert_eq!(g.free_pages() as usize, n);
        }
    }
}
