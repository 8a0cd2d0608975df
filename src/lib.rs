//! agentgate: an observability-first reverse proxy for AI agent services, on pingora.
//!
//! Layout by concern, in layers that depend one way only (bottom first; a module uses
//! its own layer and those below, `scripts/check-layers.py` checks it):
//! - foundation: `config` (file model, validation, runtime model), `errors` (the errors
//!   the gateway answers), `clock` (cheap hot-path time), `alloc` (the allocator);
//! - telemetry: `observe` (metrics, logs, traces);
//! - policies: `auth`, `balance`, `ratelimit`, `pagination`, `alerts`;
//! - `state` (the live runtime model the pieces share);
//! - `proxy` (the pingora phases and what runs in them) and `services` (the background
//!   services over the live state);
//! - control: `reload` (hot reload), `admin` (the admin listener);
//! - `server` (bootstrap and shutdown);
//! - entry points: `cli`, `demo` (demo agents, behind the default `demo` feature).

/// The version and the git commit the binary was built from (`build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("AGENTGATE_COMMIT"),
    ")"
);

pub mod admin;
pub mod ai;
pub mod alerts;
pub mod alloc;
pub mod auth;
pub mod balance;
pub mod cli;
pub mod clock;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod errors;
pub mod observe;
pub mod pagination;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod server;
pub mod services;
pub mod state;
