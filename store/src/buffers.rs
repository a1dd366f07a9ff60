//! Large byte buffers kept for reuse across threads.
//!
//! A clone or pull receives each object into a buffer on one thread and
//! frees it on another once the file is written, about a gigabyte for a
//! gigabyte cloned. The C allocator gives freed memory at the top of a
//! thread's heap back to the system, and the next buffer of that size then
//! costs a page fault per 4 KiB: on 1 GB, some 40,000 faults and 0.15 s of
//! system time. Buffers handed back here ([`give`]) go to the next [`take`]
//! instead, up to [`MAX_IDLE`] bytes of them.
//!
//! Only buffers of at least [`MIN_POOLED`] bytes are kept (the allocator
//! reuses small blocks well), and [`take`] hands out a buffer at most a
//! quarter larger than asked for, so memory bounded by the lengths of the
//! buffers in use stays bounded by 5/4 of that in capacity.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Smaller buffers are left to the allocator.
pub const MIN_POOLED: usize = 128 * 1024;
/// Idle capacity kept at most, in bytes.
pub const MAX_IDLE: usize = 32 * 1024 * 1024;

/// Idle buffers, oldest first, and their total capacity.
struct Idle {
    bufs: VecDeque<Vec<u8>>,
    bytes: usize,
}

/// A pool of idle buffers; the process has one ([`take`], [`give`]).
pub struct Pool {
    idle: Mutex<Idle>,
    max_idle: usize,
}

static POOL: Pool = Pool::new(MAX_IDLE);

/// [`Pool::take`] from the process's pool.
pub fn take(len: usize) -> Vec<u8> {
    POOL.take(len)
}

/// [`Pool::give`] to the process's pool.
pub fn give(buf: Vec<u8>) {
    POOL.give(buf)
}

impl Pool {
    /// An empty pool keeping at most `max_idle` bytes of idle capacity.
    pub const fn new(max_idle: usize) -> Self {
        Self { idle: Mutex::new(Idle { bufs: VecDeque::new(), bytes: 0 }), max_idle }
    }

    /// An empty buffer with room for at least `len` bytes (and, when it
    /// comes from the pool, at most `len + len / 4`).
    pub fn take(&self, len: usize) -> Vec<u8> {
        if len >= MIN_POOLED {
            // A poisoned lock only means another thread panicked while
            // holding it; the pool is then skipped, not trusted.
            if let Ok(mut p) = self.idle.lock() {
                let most = len.saturating_add(len / 4);
                let best = p
                    .bufs
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| (len..=most).contains(&b.capacity()))
                    .min_by_key(|(_, b)| b.capacity())
                    .map(|(i, _)| i);
                if let Some(b) = best.and_then(|i| p.bufs.remove(i)) {
                    p.bytes -= b.capacity();
                    return b;
                }
            }
        }
        Vec::with_capacity(len)
    }

    /// Hands `buf` back for a later [`Pool::take`]; its contents are
    /// dropped. Small buffers are freed, and so are the oldest idle ones
    /// when more than the pool's bound would be kept (the sizes in demand
    /// change).
    pub fn give(&self, mut buf: Vec<u8>) {
        let cap = buf.capacity();
        if !(MIN_POOLED..=self.max_idle).contains(&cap) {
            return;
        }
        buf.clear();
        let mut freed = Vec::new();
        if let Ok(mut p) = self.idle.lock() {
            while p.bytes + cap > self.max_idle {
                match p.bufs.pop_front() {
                    Some(old) => {
                        p.bytes -= old.capacity();
                        freed.push(old);
                    }
                    None => break,
                }
            }
            p.bytes += cap;
            p.bufs.push_back(buf);
        }
        // Freed outside the lock.
        drop(freed);
    }

    /// Idle capacity now, in bytes.
    pub fn idle_bytes(&self) -> usize {
        self.idle.lock().map_or(0, |p| p.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_within_bounds() {
        let pool = Pool::new(8 << 20);
        // Small buffers are not kept.
        pool.give(Vec::with_capacity(MIN_POOLED - 1));
        assert_eq!(pool.idle_bytes(), 0);
        // A buffer comes back for a length it fits within a quarter.
        let mut b = pool.take(1 << 20);
        assert!(b.capacity() >= 1 << 20);
        b.extend_from_slice(&[7; 100]);
        let cap = b.capacity();
        let ptr = b.as_ptr();
        pool.give(b);
        assert_eq!(pool.idle_bytes(), cap);
        let again = pool.take(cap - cap / 8);
        assert_eq!(again.as_ptr(), ptr, "the buffer given back is taken again");
        assert!(again.is_empty(), "contents are dropped");
        assert_eq!(pool.idle_bytes(), 0);
        pool.give(again);
        // Not for a length it exceeds by more than a quarter, nor one it cannot hold.
        let small = pool.take(cap / 2);
        assert_ne!(small.as_ptr(), ptr);
        let large = pool.take(cap + 1);
        assert_ne!(large.as_ptr(), ptr);
        assert!(large.capacity() > cap);
        // The smallest that fits is taken.
        pool.give(Vec::with_capacity(cap + cap / 8));
        let smallest = pool.take(cap);
        assert_eq!(smallest.as_ptr(), ptr);
        // Idle bytes stay within the bound however much is given, and the
        // newest are kept.
        for _ in 0..40 {
            pool.give(Vec::with_capacity(1 << 20));
            assert!(pool.idle_bytes() <= 8 << 20);
        }
        let newest = Vec::with_capacity(3 << 20);
        let newest_ptr = newest.as_ptr();
        pool.give(newest);
        assert!(pool.idle_bytes() <= 8 << 20);
        let again = pool.take(3 << 20);
        assert_eq!(again.as_ptr(), newest_ptr);
        // A buffer larger than the bound is not kept.
        pool.give(Vec::with_capacity(9 << 20));
        assert!(pool.idle_bytes() <= 8 << 20);
        drop((small, large, smallest, again));
    }
}
