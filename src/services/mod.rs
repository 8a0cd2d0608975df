//! The background services that run the policies' periodic work against the live
//! state: active health checks, the rate-limit store probe, the alert evaluator, the
//! resolution of backends by name. They
//! stand above `state`, which the policies themselves never see.

pub mod alerts;
pub mod health;
pub mod rate_limit_store;
pub mod resolve;
