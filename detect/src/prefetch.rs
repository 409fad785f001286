//! Cache prefetch hints: a batch's table reads, or the ring record after the one being
//! read, are announced first, so that their cache misses overlap instead of queueing
//! behind one another.

/// Prefetches every cache line `items` spans into all cache levels, once each. A hint: it
/// never faults, never waits for memory and changes nothing a program can observe but
/// timing.
#[inline]
pub(crate) fn lines<T>(items: &[T]) {
    span(items.as_ptr().cast(), std::mem::size_of_val(items));
}

/// Prefetches the cache lines of the `bytes` bytes from `start` into all cache levels, once
/// each. A hint: it never faults and never waits for memory. `start` is only a hint's
/// address, never dereferenced: any address will do (memory that is not mapped is simply not
/// fetched), such as a ring buffer's next record before it is read.
#[inline]
pub fn span(start: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        if bytes == 0 {
            return;
        }
        // Offsets from `start` of each line's first byte in the span (the first one may lie
        // before `start`).
        let lead = start as usize % 64;
        let first = start.cast::<i8>().wrapping_sub(lead);
        let mut off = 0;
        while off < lead + bytes {
            // SAFETY: SSE is part of the x86_64 baseline, so the instruction exists; a
            // prefetch reads nothing architecturally and never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, bytes);
}
