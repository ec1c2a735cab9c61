//! [`CancelToken`]: a cancellation flag shared between threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A cancellation flag shared between threads (an `Arc<AtomicBool>`; clones share it).
///
/// Generation checks it before every decode step, so a cancelled generation stops within one
/// token. A cancel request stops the generation running now or, when none runs, the next one;
/// the generation that observes it clears it.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests cancellation.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether cancellation was requested (and not yet observed by a generation).
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Clears a pending request.
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    pub(crate) fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}
