//! REST over the domain layer. For now: health, readiness and metrics; accounts and meetings
//! join in a later issue.

pub mod error;
pub mod health;

pub use error::ApiError;
