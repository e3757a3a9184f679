//! Running user code so that its errors and panics become errors for the caller.

use std::panic::{catch_unwind, AssertUnwindSafe};

use ember_core::proto::{ErrorKind, RemoteError};

use crate::registry::{CallError, Started};

/// Runs user code, turning its errors and panics into errors for the caller.
pub(crate) fn guarded(
    f: impl FnOnce() -> Result<Vec<u8>, CallError>,
) -> Result<Vec<u8>, RemoteError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(call_error(e)),
        Err(p) => Err(call_error(CallError::Panicked(panic_message(&p)))),
    }
}

/// Starts a call in user code, turning a panic while it starts into an error for the caller.
pub(crate) fn guarded_start(f: impl FnOnce() -> Started) -> Started {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(started) => started,
        Err(p) => Started::Done(Err(CallError::Panicked(panic_message(&p)))),
    }
}

/// The caller's view of a failed call.
pub(crate) fn call_error(e: CallError) -> RemoteError {
    let kind = match e {
        CallError::User(_) | CallError::Panicked(_) => ErrorKind::User,
        CallError::BadArgs(_) | CallError::UnknownMethod(_) => ErrorKind::BadRequest,
    };
    RemoteError::new(kind, e.to_string())
}

/// The text of a panic's payload.
pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-text payload".to_string()
    }
}
