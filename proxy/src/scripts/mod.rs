//! What the proxy knows about scripts without running them: their cache (SHA1 → body, and what
//! each is journaled as), the source checks that refuse what replay cannot reproduce, and the
//! pinned-time wrapper for scripts that read the clock.

pub(crate) mod body;
mod cache;
pub(crate) mod pin;

pub(crate) use cache::{Journaled, ScriptCache};
