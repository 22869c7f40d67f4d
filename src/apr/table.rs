//! APR tables (headers, notes, environment).

use crate::ffi;
use std::ffi::{c_char, CStr};
use std::ptr::NonNull;

#[derive(Clone, Copy, Debug)]
pub struct TableRef(NonNull<ffi::apr_table_t>);

impl TableRef {
    /// # Safety
    /// `t` must be a live table used only by this thread while the handle is
    /// used, allocated from a pool that outlives the handle.
    pub unsafe fn from_raw(t: *mut ffi::apr_table_t) -> Option<TableRef> {
        NonNull::new(t).map(TableRef)
    }

    pub fn as_ptr(self) -> *mut ffi::apr_table_t {
        self.0.as_ptr()
    }

    /// Every (key, value) entry in order, as byte slices that live as long
    /// as the table's pool (entries are never freed individually).
    pub fn entries<'a>(self) -> Vec<(&'a [u8], &'a [u8])> {
        let mut out = Vec::new();
        self.for_each(|k, v| out.push((k, v)));
        out
    }

    /// Calls `f` for every (key, value) entry in order.
    pub fn for_each<'a>(self, mut f: impl FnMut(&'a [u8], &'a [u8])) {
        for e in self.raw_entries() {
            // SAFETY: keys and values are NUL-terminated strings in the
            // table's pool (see raw_entries).
            let (k, v) = unsafe {
                let v = if e.val.is_null() { &[][..] } else { CStr::from_ptr(e.val).to_bytes() };
                (CStr::from_ptr(e.key).to_bytes(), v)
            };
            f(k, v);
        }
    }

    /// Whether some entry's key satisfies `pred` (stops at the first).
    /// Inlined: a few instructions, on the request path of every stream
    /// whose environment is not empty (`c2::set_env`), where it then sits
    /// with its caller among the functions `link/hot-code.ld` lists.
    #[inline]
    pub fn any_key(self, mut pred: impl FnMut(&[u8]) -> bool) -> bool {
        // SAFETY: keys are NUL-terminated strings in the table's pool (see
        // raw_entries); only the keys are read.
        self.raw_entries().any(|e| pred(unsafe { CStr::from_ptr(e.key) }.to_bytes()))
    }

    /// The table's live entries in order (deleted slots, whose key is
    /// NULL, skipped), borrowed for as long as the table's pool lives.
    #[inline]
    fn raw_entries<'a>(self) -> impl Iterator<Item = &'a ffi::apr_table_entry_t> {
        // SAFETY: apr_table_elts returns the table's entry array (`nelts`
        // entries), which lives in the table's pool; the handle's contract
        // (from_raw) keeps the table unchanged by others while it is used.
        let entries: &'a [ffi::apr_table_entry_t] = unsafe {
            let arr = ffi::apr_table_elts(self.as_ptr());
            if arr.is_null() || (*arr).elts.is_null() {
                &[]
            } else {
                std::slice::from_raw_parts((*arr).elts as *const ffi::apr_table_entry_t, (*arr).nelts.max(0) as usize)
            }
        };
        entries.iter().filter(|e| !e.key.is_null())
    }

    pub fn is_empty(self) -> bool {
        // SAFETY: live table.
        unsafe { ffi::apr_is_empty_table(self.as_ptr()) != 0 }
    }

    /// The first value for `key` (case-insensitive), as bytes.
    pub fn get<'a>(self, key: &CStr) -> Option<&'a [u8]> {
        // SAFETY: live table; returned value lives in the table's pool.
        unsafe {
            let v = ffi::apr_table_get(self.as_ptr(), key.as_ptr());
            if v.is_null() {
                None
            } else {
                Some(CStr::from_ptr(v).to_bytes())
            }
        }
    }

    /// Sets `key` to `val`, both copied into the table's pool.
    pub fn set(self, key: &CStr, val: &CStr) {
        // SAFETY: live table; apr_table_set copies both strings.
        unsafe { ffi::apr_table_set(self.as_ptr(), key.as_ptr(), val.as_ptr()) }
    }

    /// Adds `key: val` without copying: both must live in (or outlive) the
    /// table's pool.
    ///
    /// # Safety
    /// `key` and `val` must be NUL-terminated and outlive the table.
    pub unsafe fn addn(self, key: *const c_char, val: *const c_char) {
        // SAFETY: caller contract.
        unsafe { ffi::apr_table_addn(self.as_ptr(), key, val) }
    }

    /// Sets `key: val` without copying.
    ///
    /// # Safety
    /// As for [`TableRef::addn`].
    pub unsafe fn setn(self, key: *const c_char, val: *const c_char) {
        // SAFETY: caller contract.
        unsafe { ffi::apr_table_setn(self.as_ptr(), key, val) }
    }

    pub fn unset(self, key: &CStr) {
        // SAFETY: live table.
        unsafe { ffi::apr_table_unset(self.as_ptr(), key.as_ptr()) }
    }

    pub fn clear(self) {
        // SAFETY: live table.
        unsafe { ffi::apr_table_clear(self.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_iterate() {
        // SAFETY: a private root pool and table for the test.
        unsafe {
            let p = crate::apr::test_root_pool();
            let t = TableRef::from_raw(ffi::apr_table_make(p, 4)).expect("table");
            t.set(c"Content-Type", c"text/plain");
            t.set(c"X-A", c"1");
            assert_eq!(t.get(c"content-type"), Some(&b"text/plain"[..]));
            t.unset(c"X-A");
            assert_eq!(t.entries(), vec![(&b"Content-Type"[..], &b"text/plain"[..])]);
            ffi::apr_pool_destroy(p);
        }
    }
}
