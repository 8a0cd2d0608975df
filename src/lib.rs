//! agentgate: an observability-first reverse proxy for AI agent services, on pingora.
//!
//! Layout by concern: `config` (file model, validation, runtime model), `proxy` (the
//! pingora phases and what runs in them), `balance` (backend choice and health),
//! `ratelimit`, `pagination`, `auth`, `observe` (metrics, logs, traces), `alerts`,
//! `admin` (the admin listener), `demo` (demo agents), `clock` (cheap hot-path time),
//! `server` (bootstrap and shutdown), `reload` (hot reload), `state` (what the pieces
//! share), `alloc` (the binary's allocator).

pub mod admin;
pub mod alerts;
pub mod alloc;
pub mod auth;
pub mod balance;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod observe;
pub mod pagination;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod server;
pub mod state;
