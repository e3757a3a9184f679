//! A call's arguments that remember which destinations they were made for.

use std::sync::Mutex;

use ember::{ArgsError, CallArgs};

/// Fixed bytes, recording every `same_host` they were asked for, in order; or, made with
/// [`RecordingArgs::failing`], an error each time.
pub struct RecordingArgs {
    bytes: Option<Vec<u8>>,
    asked: Mutex<Vec<bool>>,
}

impl RecordingArgs {
    /// Arguments that are `bytes` wherever they go.
    pub fn new(bytes: Vec<u8>) -> Self {
        RecordingArgs {
            bytes: Some(bytes),
            asked: Mutex::new(Vec::new()),
        }
    }

    /// Arguments that can never be made.
    pub fn failing() -> Self {
        RecordingArgs {
            bytes: None,
            asked: Mutex::new(Vec::new()),
        }
    }

    /// Each `same_host` asked for so far, in order.
    pub fn asked(&self) -> Vec<bool> {
        self.asked.lock().unwrap().clone()
    }
}

impl CallArgs for RecordingArgs {
    fn bytes_for(&self, same_host: bool) -> Result<Vec<u8>, ArgsError> {
        self.asked.lock().unwrap().push(same_host);
        self.bytes
            .clone()
            .ok_or_else(|| ArgsError::new("the test's arguments cannot be made"))
    }
}
