//! The shutdown gate every resource handle carries.
//!
//! One gate per runtime, shared by every clone of every handle: closing it (the first step of
//! shutdown) makes every operation that starts afterwards fail with `Unavailable`, whichever
//! task or actor calls it. Operations already past the check finish normally.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// Open until shutdown begins; then closed for good. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<AtomicBool>);

impl Gate {
    /// `Unavailable` for `op` once the gate is closed.
    #[inline]
    pub fn check(&self, op: &'static str) -> Result<()> {
        if self.0.load(Ordering::Acquire) {
            Err(Error::unavailable(op))
        } else {
            Ok(())
        }
    }

    /// Close the gate (idempotent).
    pub fn close(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether shutdown has begun.
    pub fn is_closed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn a_closed_gate_refuses_every_clone() {
        let gate = Gate::default();
        let clone = gate.clone();
        assert!(clone.check("cache.get").is_ok());
        gate.close();
        let err = clone.check("cache.get").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(clone.is_closed());
    }
}
