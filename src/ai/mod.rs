//! Agent awareness: what an LLM-style exchange says about itself, read from the bytes
//! as they pass and never changed. [`request`] reads `model`, `stream` and the stated
//! output limit from the request body; [`sse`] splits an event stream into events
//! incrementally; [`response`] reads usage, the answering model and the moments content
//! arrives from a JSON body or from the stream's events, for the API the route names.

pub mod quick;
pub mod request;
pub mod response;
pub mod sse;

pub use request::RequestFacts;
pub use response::{Meter, Usage, UsageSource};
pub use sse::SseParser;
