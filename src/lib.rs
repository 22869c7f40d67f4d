//! mod_h2rs: HTTP/2 for Apache httpd 2.4, written in Rust.
//!
//! Layout (see docs/INTERNALS.md for threads, queues, pools and invariants):
//! - `ffi`: bindgen bindings of httpd/APR and the panic boundary every
//!   `extern "C"` entry goes through.
//! - `apr`: small safe wrappers for pools, brigades/buckets and tables.
//! - `nghttp2`: a safe wrapper around the nghttp2 server session.
//! - `session`, `stream`, `request`: the HTTP/2 protocol logic. No `unsafe`,
//!   no httpd: tested with `cargo test` against an in-memory nghttp2 client.
//! - `c1` (client connection loop), `c2` (secondary connection per stream),
//!   `response` (the c2 response filter), `workers` (the thread pool),
//!   `config` (the H2* directives), `hooks` (httpd's entry points).
//! - `hash`, `text`: an unkeyed hasher, stack formatting and inline short
//!   byte strings for the per-request paths (callgrind counted SipHash,
//!   `format!` and small heap copies there).
//! - `proxy`: proxy_http2_module, the multiplexing reverse proxy to h2c
//!   backends (scheme handler, event-loop engine).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod alloc;
pub mod apr;
pub mod c1;
pub mod c2;
pub mod clock;
pub mod config;
pub mod conftree;
pub mod fastpath;
pub mod ffi;
pub mod filemap;
pub mod frames;
pub mod h2status;
pub mod hash;
pub mod hooks;
pub mod limits;
pub mod log;
pub mod negotiation;
pub mod nghttp2;
pub mod park;
pub mod priority;
pub mod proxy;
pub mod reqtimeout;
pub mod request;
pub mod response;
pub mod session;
pub mod signal;
pub mod stream;
pub mod text;
pub mod websocket;
pub mod workers;

/// Small allocations of the module's Rust code (and of nghttp2) come from
/// shared size-class slabs in the children (`alloc`): with glibc's malloc
/// on the MPM's 64 threads, RSS grew with uptime.
#[global_allocator]
static ALLOCATOR: alloc::ModuleAlloc = alloc::ModuleAlloc;
