//! How freed heap memory goes back to the operating system. Loading a model parses tens of MiB of
//! metadata and tokenizer JSON that are freed right away, but glibc keeps freed pages in its
//! arenas, where they would count towards the resident set for the whole run
//! ([`release_free_memory`]). A trainer is the opposite case: every update frees and allocates
//! the same few hundred MiB of graph memory again, and glibc serves blocks that large with fresh
//! `mmap`s, whose pages the kernel must fault in and zero every time ([`keep_freed_memory`]).

/// Asks the allocator to give unused heap pages back to the system (glibc's `malloc_trim`); a
/// no-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only releases free pages of glibc's own heap; it takes no pointers
        // and is thread-safe.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Asks the allocator to serve large blocks from its heap and keep freed ones for reuse instead
/// of mapping and unmapping them (glibc's `M_MMAP_MAX` 0: no block gets its own mapping;
/// `M_TRIM_THRESHOLD` 1 GiB: free memory at the top of the heap is kept); a no-op elsewhere.
/// For processes that allocate and free the same large buffers over and over (a training
/// loop): the memory stays resident between uses.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // glibc's malloc.h: M_TRIM_THRESHOLD -1, M_MMAP_MAX -4.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_MAX: i32 = -4;
        const ONE_GIB: i32 = 1 << 30;
        // SAFETY: mallopt only changes glibc's allocation thresholds; it takes no pointers and
        // is thread-safe. Blocks already allocated are unaffected.
        unsafe {
            mallopt(M_MMAP_MAX, 0);
            mallopt(M_TRIM_THRESHOLD, ONE_GIB);
        }
    }
}
