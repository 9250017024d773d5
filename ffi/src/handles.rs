//! Tables of live handles. A handle given to C is the address of an object inside an `Arc` that
//! a table holds; every call looks the address up instead of dereferencing it, so NULL, freed
//! and foreign pointers are refused with a status code, and freeing twice is harmless. A call
//! works on its own clone of the `Arc`, so freeing a handle while another thread uses it is safe
//! too: the object lives until the last user returns.

use crate::error::{FfiError, FfiResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Live handles of one kind, by address.
pub struct Table<T> {
    live: Mutex<HashMap<usize, Arc<T>>>,
    what: &'static str,
}

impl<T> Table<T> {
    pub fn new(what: &'static str) -> Self {
        Table {
            live: Mutex::new(HashMap::new()),
            what,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<usize, Arc<T>>> {
        // A panic while the map was locked cannot have left it half-updated (each operation is
        // one insert, get or remove), so a poisoned lock is still a consistent map.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `object` and returns its handle (the object's address).
    pub fn insert(&self, object: Arc<T>) -> *const T {
        let handle = Arc::as_ptr(&object);
        self.lock().insert(handle as usize, object);
        handle
    }

    /// The object behind `handle`: NULL and unknown addresses are errors.
    pub fn get<U>(&self, handle: *const U) -> FfiResult<Arc<T>> {
        if handle.is_null() {
            return Err(FfiError::Null(self.what));
        }
        self.lock()
            .get(&(handle as usize))
            .cloned()
            .ok_or(FfiError::InvalidHandle(self.what))
    }

    /// Unregisters `handle`; the object is dropped once no call uses it. Unknown handles
    /// (NULL, freed twice) are ignored: returns whether it was live.
    pub fn remove<U>(&self, handle: *const U) -> bool {
        // Take the object out first, drop it after the lock is released: dropping a context or
        // a model can take a while (threads joined, memory unmapped).
        let removed = self.lock().remove(&(handle as usize));
        removed.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_refuse_null_unknown_and_freed_handles() {
        let table: Table<u64> = Table::new("thing");
        let h = table.insert(Arc::new(7));
        assert_eq!(*table.get(h).unwrap(), 7);
        assert!(matches!(
            table.get(std::ptr::null::<u64>()),
            Err(FfiError::Null("thing"))
        ));
        assert!(matches!(
            table.get(std::ptr::dangling::<u64>()),
            Err(FfiError::InvalidHandle(_))
        ));
        let held = table.get(h).unwrap();
        assert!(table.remove(h));
        assert!(!table.remove(h), "a second free is ignored");
        assert!(table.get(h).is_err());
        assert_eq!(*held, 7, "a user's clone outlives the handle");
    }
}
