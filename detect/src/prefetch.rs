//! Cache prefetch hints: a batch's table reads are announced first, so that their cache
//! misses overlap instead of queueing behind one another.

/// Prefetches every cache line `items` spans into all cache levels, once each. A hint: it
/// never faults, never waits for memory and changes nothing a program can observe but
/// timing.
#[inline]
pub(crate) fn lines<T>(items: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(items);
        if bytes == 0 {
            return;
        }
        let start = items.as_ptr().cast::<i8>();
        // Offsets from `start` of each line's first byte in the span (the first one may lie
        // before `start`: the pointer is only a hint's address, never dereferenced).
        let lead = start as usize % 64;
        let mut off = 0;
        while off < lead + bytes {
            // SAFETY: SSE is part of the x86_64 baseline, so the instruction exists; a
            // prefetch reads nothing architecturally and never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_sub(lead).wrapping_add(off)) };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = items;
}
