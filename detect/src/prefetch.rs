//! Cache prefetch hints: a batch's table reads are announced first, so that their cache
//! misses overlap instead of queueing behind one another.

/// Prefetches every cache line `items` spans into all cache levels. A hint: it never faults,
/// never waits for memory and changes nothing a program can observe but timing.
#[inline]
pub(crate) fn lines<T>(items: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = items.as_ptr().cast::<i8>();
        let bytes = std::mem::size_of_val(items);
        // The line of the first byte, then each 64 bytes on, and the line of the last byte.
        let mut off = 0;
        while off < bytes {
            // SAFETY: SSE is part of the x86_64 baseline, so the instruction exists; a
            // prefetch reads nothing architecturally and never faults, and the address lies
            // within `items`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(off)) };
            off += 64;
        }
        if bytes > 0 {
            // SAFETY: as above (the slice's last byte).
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(bytes - 1)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = items;
}
