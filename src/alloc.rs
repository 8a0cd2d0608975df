//! The process's allocator: mimalloc, asked the plain way wherever the layout allows.
//!
//! A `GlobalAlloc` that hands every allocation to `mi_malloc_aligned` (as the `mimalloc`
//! crate does) pays for it on the hot path: mimalloc 3's aligned entry point stays on
//! its fast path only for small blocks, and a read buffer or boxed request future of a
//! few kilobytes takes the over-allocating path (about twenty allocations per proxied
//! request, 4% of its instructions under callgrind). Every mimalloc block is
//! word-aligned, so a layout that asks for no more than that goes to `mi_malloc`,
//! `mi_zalloc` and `mi_realloc`; only larger alignments use the aligned calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc with word-aligned layouts on its plain entry points.
pub struct Allocator;

/// The alignment of every block mimalloc hands out (block sizes are whole words).
const BLOCK_ALIGN: usize = std::mem::size_of::<usize>();

// SAFETY: each method forwards to the mimalloc call that returns (or frees) a block of
// at least `layout.size()` bytes at `layout.align()`: the plain calls whenever that
// alignment is at most BLOCK_ALIGN, the aligned calls otherwise. `mi_free` frees blocks
// from either family.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        new_block(layout, mi::mi_malloc, mi::mi_malloc_aligned)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        new_block(layout, mi::mi_zalloc, mi::mi_zalloc_aligned)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr as *mut c_void);
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= BLOCK_ALIGN {
            mi::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
        } else {
            mi::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
        }
    }
}

/// A new block from `plain` when mimalloc's own block alignment covers the layout's,
/// else from `aligned`.
#[inline]
unsafe fn new_block(
    layout: Layout,
    plain: unsafe extern "C" fn(usize) -> *mut c_void,
    aligned: unsafe extern "C" fn(usize, usize) -> *mut c_void,
) -> *mut u8 {
    if layout.align() <= BLOCK_ALIGN {
        plain(layout.size()) as *mut u8
    } else {
        aligned(layout.size(), layout.align()) as *mut u8
    }
}

/// `mi_option_arena_eager_commit`, fifth in mimalloc's option enum (libmimalloc-sys names
/// no constant for it).
const MI_OPTION_ARENA_EAGER_COMMIT: mi::mi_option_t = 4;

/// Sets mimalloc's options for a server holding many idle streams; the binary calls it
/// from an `.init_array` entry, before the first allocation makes the first arena.
///
/// Arena memory is committed on demand, not eagerly: with mimalloc's default (eager on
/// systems that overcommit), a gateway holding 2,000 open SSE streams was 174 KiB
/// resident per stream and 39 MB idle; with commits on demand, 55 KiB and 23 MB
/// (2026-12-06, release build, demo agent, 12 events per stream). The same holds with
/// `MIMALLOC_ARENA_EAGER_COMMIT=0` in the environment, which an operator may still set.
pub fn configure() {
    // SAFETY: sets an option value; mimalloc reads options under its own locking, and
    // this runs before the worker threads exist.
    unsafe { mi::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) }
}

/// Starts the thread that hands freed memory back to the OS after bursts.
///
/// mimalloc 3 returns freed pages to its arenas at once but purges them (gives them
/// back to the OS) only a purge delay later (1 s by default), and only when some thread
/// calls into it after that: a worker that goes quiet after a burst never does, so
/// 5,000 closed connections left 481 MB resident for good. Arena purging is
/// process-wide, so one thread that collects every second gives it all back (33 MB
/// within 5 s, `make bench`'s idle table) while the workers' own allocation path stays
/// as it is. A purge delay of 0 would do the same from the workers, at the price of a
/// page fault every five requests under load (measured: 0.15-0.23 faults per request
/// against 0.001).
pub fn start_purger() {
    let started = std::thread::Builder::new()
        .name("agentgate-purge".into())
        .spawn(|| {
            // mimalloc collects nothing for a thread that never allocated (its
            // thread-local heap is not set up until then).
            std::hint::black_box(Box::new(0u64));
            loop {
                std::thread::sleep(PURGE_EVERY);
                // SAFETY: takes no pointers; walks mimalloc's own structures, and its
                // arena purge is guarded against concurrent purges.
                unsafe { mi::mi_collect(false) }
            }
        });
    if let Err(e) = started {
        log::warn!("memory freed after bursts is not given back to the OS: purge thread failed to start: {e}");
    }
}

/// How often freed memory past mimalloc's purge delay is handed back.
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_eager_commit_is_off_once_configured() {
        configure();
        // SAFETY: reads an option value.
        assert_eq!(
            unsafe { mi::mi_option_get(MI_OPTION_ARENA_EAGER_COMMIT) },
            0
        );
    }

    /// Sizes around mimalloc's size classes and page limits, every alignment up to a
    /// page: each block is aligned, writable in full, zeroed when asked, and keeps its
    /// contents across growing and shrinking reallocations.
    #[test]
    fn blocks_are_aligned_sized_and_keep_their_contents() {
        let sizes = [
            1usize, 7, 8, 9, 15, 16, 17, 24, 31, 48, 100, 1000, 1024, 1025, 4000, 8192, 10_000,
            65_536, 70_000, 600_000,
        ];
        let aligns = [1usize, 2, 4, 8, 16, 32, 64, 128, 4096];
        for &size in &sizes {
            for &align in &aligns {
                let layout = Layout::from_size_align(size, align).expect("valid layout");
                unsafe {
                    let p = Allocator.alloc(layout);
                    assert!(!p.is_null(), "size {size} align {align}");
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    for i in 0..size {
                        *p.add(i) = (i % 251) as u8;
                    }
                    let grown = size * 3 + 5;
                    let q = Allocator.realloc(p, layout, grown);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "grown size {grown} align {align}");
                    for i in 0..size {
                        assert_eq!(*q.add(i), (i % 251) as u8, "byte {i} after growing");
                    }
                    let grown_layout = Layout::from_size_align(grown, align).expect("valid");
                    let shrunk = size.div_ceil(2);
                    let r = Allocator.realloc(q, grown_layout, shrunk);
                    assert_eq!(r as usize % align, 0, "shrunk size {shrunk} align {align}");
                    for i in 0..shrunk {
                        assert_eq!(*r.add(i), (i % 251) as u8, "byte {i} after shrinking");
                    }
                    Allocator.dealloc(r, Layout::from_size_align(shrunk, align).expect("valid"));

                    let z = Allocator.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0), "zeroed size {size}");
                    Allocator.dealloc(z, layout);
                }
            }
        }
    }
}
