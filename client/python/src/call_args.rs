//! A Python call's arguments as the executor takes them, made for each attempt's destination
//! ([`ember::CallArgs`]): the results of the calls they wait on, then the call's own pickle,
//! each with its large buffers in shared-memory files when the executor runs on this machine
//! (it maps them: nothing copied) and inline when it runs elsewhere.

use std::sync::Arc;

use ember::{ArgsError, CallArgs};

use crate::envelope::HostForms;
use crate::pending::{Outcome, Pending};

/// A call's arguments: the results of `deps` (in order) and its payload, each in both forms.
pub(crate) struct PythonArgs {
    deps: Vec<Arc<HostForms>>,
    payload: HostForms,
}

impl PythonArgs {
    /// The arguments of a call whose pickle is `payload`, once every one of `deps` (the
    /// calls whose results are arguments) has ended; a failed one fails the call.
    pub(crate) async fn gather(deps: &[Pending], payload: HostForms) -> Result<Self, String> {
        let mut ended = Vec::with_capacity(deps.len());
        for dep in deps {
            match dep.ended().await {
                Outcome::Done(forms) => ended.push(forms),
                Outcome::Failed(e) => return Err(format!("an argument's call failed: {e}")),
            }
        }
        Ok(PythonArgs {
            deps: ended,
            payload,
        })
    }
}

impl CallArgs for PythonArgs {
    /// The count of the deps as a 4-byte little-endian number, then each one's result as an
    /// 8-byte length and its bytes, then the payload (`ember._executor._split` reads it).
    fn bytes_for(&self, same_host: bool) -> Result<Vec<u8>, ArgsError> {
        let mut parts = Vec::with_capacity(self.deps.len());
        for dep in &self.deps {
            parts.push(dep.for_host(same_host).map_err(ArgsError::new)?);
        }
        let payload = self.payload.for_host(same_host).map_err(ArgsError::new)?;
        let len = 4 + parts.iter().map(|p| 8 + p.len()).sum::<usize>() + payload.len();
        let mut args = Vec::with_capacity(len);
        args.extend_from_slice(&(parts.len() as u32).to_le_bytes());
        for part in parts {
            args.extend_from_slice(&(part.len() as u64).to_le_bytes());
            args.extend_from_slice(part);
        }
        args.extend_from_slice(payload);
        Ok(args)
    }
}
