//! Returning freed heap memory to the operating system. Loading a model parses tens of MiB of
//! metadata and tokenizer JSON that are freed right away, but glibc keeps freed pages in its
//! arenas, where they would count towards the resident set for the whole run.

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
