//! Locking a `std::sync::Mutex` that survives a panicked holder.
//!
//! The relay's shared state stays consistent across each critical section (no section leaves
//! half-done state behind on a panic), so a poisoned lock is taken as it is instead of
//! spreading the panic to every later caller.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
