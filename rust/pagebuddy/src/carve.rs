//! Constructors that carve metadata (and links) from the front of one arena.

use crate::arena::Arena;
use crate::config::Config;
use crate::error::{Error, GeometryError};
use crate::store::{meta_from_bytes, Intrusive, SideTable};
use crate::Pool;

/// Bytes that [`Pool::new_intrusive_in`] or [`Pool::new_side_table_in`] set aside at the front
/// of the arena for `nr_pages` pages: metadata (and links), rounded up to a whole page.
pub const fn carve_bytes(nr_pages: usize, page_size: usize, side_table: bool) -> usize {
    let links = if side_table {
        crate::link_bytes(nr_pages)
    } else {
        0
    };
    let front = crate::meta_bytes(nr_pages).saturating_add(links);
    match front.checked_next_multiple_of(if page_size == 0 { 1 } else { page_size }) {
        Some(n) => n,
        None => usize::MAX,
    }
}

/// Splits `bytes` into the front `carve_bytes` and the pages, or says how much was missing.
fn carve<'a>(
    bytes: &'a mut [u8],
    config: &Config,
    side_table: bool,
) -> Result<(&'a mut [u8], &'a mut [u8]), Error> {
    let geo = config.geometry()?;
    let front = carve_bytes(config.nr_pages, config.page_size, side_table);
    let need = front.saturating_add(geo.arena_bytes().unwrap_or(usize::MAX));
    if bytes.len() < need {
        return Err(GeometryError::ArenaTooSmall {
            need,
            have: bytes.len(),
        }
        .into());
    }
    Ok(bytes.split_at_mut(front))
}

impl<'a> Pool<'a, Intrusive> {
    /// A pool whose metadata is carved from the front of `bytes`
    /// ([`carve_bytes`]`(nr_pages, page_size, false)` bytes) and whose pages follow it; free-list
    /// links live in the free pages. `bytes` must be 2-byte aligned.
    ///
    /// ```
    /// use pagebuddy::{carve_bytes, Config, Pool};
    /// let config = Config::new(16).page_size(256);
    /// let mut bytes = vec![0u8; carve_bytes(16, 256, false) + 16 * 256];
    /// let mut pool = Pool::new_intrusive_in(&mut bytes, config)?;
    /// let pfn = pool.alloc(4)?;
    /// assert_eq!((pfn, pool.free_pages()), (0, 0));
    /// # Ok::<(), pagebuddy::Error>(())
    /// ```
    pub fn new_intrusive_in(bytes: &'a mut [u8], config: Config) -> Result<Self, Error> {
        let (front, pages) = carve(bytes, &config, false)?;
        let meta = meta_from_bytes(front, config.nr_pages)?;
        Pool::new(pages, meta, Intrusive, config)
    }
}

impl<'a> Pool<'a, SideTable<'a>> {
    /// A pool whose metadata and link table are carved from the front of `bytes`
    /// ([`carve_bytes`]`(nr_pages, page_size, true)` bytes) and whose pages follow it. `bytes`
    /// must be 4-byte aligned.
    ///
    /// ```
    /// use pagebuddy::{carve_bytes, Config, Pool};
    ///
    /// #[repr(C, align(64))]
    /// struct Memory([u8; 64 + 3 * 64]);
    /// assert_eq!(carve_bytes(3, 64, true), 64); // 3 * (4 + 8) bytes, rounded up to a page
    ///
    /// let mut memory = Memory([0; 64 + 3 * 64]);
    /// let pool = Pool::new_side_table_in(&mut memory.0, Config::new(3).page_size(64))?;
    /// assert_eq!(pool.buddyinfo(), &[1, 1]); // pages {2} and {0, 1}
    /// # Ok::<(), pagebuddy::Error>(())
    /// ```
    pub fn new_side_table_in(bytes: &'a mut [u8], config: Config) -> Result<Self, Error> {
        let (front, pages) = carve(bytes, &config, true)?;
        let (meta, links) = front.split_at_mut(crate::meta_bytes(config.nr_pages));
        let meta = meta_from_bytes(meta, config.nr_pages)?;
        let links = SideTable::from_bytes(links, config.nr_pages)?;
        Pool::new(pages, meta, links, config)
    }
}

impl<'a> From<&'a mut [u8]> for Arena<'a> {
    fn from(bytes: &'a mut [u8]) -> Self {
        Arena::new(bytes)
    }
}
