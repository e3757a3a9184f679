//! The task functions and actor types compiled into this executable, collected at link time.
//!
//! `#[ember::task]` and `#[ember::actor]` submit one entry each; a worker advertises the names it
//! finds here, and its executors look them up to run them. The built-in actor types of every
//! worker (the GPU actor, [`crate::gpu_actor`]) are listed here directly rather than through
//! `inventory`, so no linker can leave them out.

use std::fmt;

/// Why one call into user code failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The arguments were not a valid archive of what the function takes.
    #[error("arguments do not match the function's parameters: {0}")]
    BadArgs(String),
    /// The actor has no method of that name.
    #[error("actor has no method `{0}`")]
    UnknownMethod(String),
    /// The user's code returned an error.
    #[error("{0}")]
    User(String),
    /// The user's code panicked.
    #[error("panicked: {0}")]
    Panicked(String),
}

/// A task function, as `#[ember::task]` registers it.
pub struct TaskEntry {
    /// The unique name: the function's module path and name.
    pub name: &'static str,
    /// Decodes the arguments, runs the function, encodes the result.
    pub invoke: fn(&[u8]) -> Result<Vec<u8>, CallError>,
}

/// What a call returns: its archived result, or why it failed.
pub type CallOutcome = Result<Vec<u8>, CallError>;

/// How a call went once [`ActorInstance::start`] returned.
#[derive(Debug)]
pub enum Started {
    /// It ran to its end on the actor's thread.
    Done(CallOutcome),
    /// It runs on elsewhere (an event loop of the actor's own); its outcome is sent on this
    /// channel when it ends. A sender dropped unsent fails the call.
    Later(tokio::sync::oneshot::Receiver<CallOutcome>),
}

/// A live actor inside an executor process.
///
/// Its calls start one at a time on the actor's thread, in arrival order per caller. A type
/// whose calls can finish later (Python's `async def` methods) answers [`Started::Later`]
/// from [`ActorInstance::start`]; the actor's host then takes further calls while those run,
/// unless the actor checkpoints, whose calls run one at a time to their end.
pub trait ActorInstance: Send {
    /// Runs one method with archived arguments and returns the archived result.
    fn call(&mut self, method: &str, args: &[u8]) -> CallOutcome;

    /// Starts one method call: it ends here ([`Started::Done`]), or later
    /// ([`Started::Later`]), while further calls start. By default it runs [`Self::call`]
    /// to its end.
    fn start(&mut self, method: &str, args: &[u8]) -> Started {
        Started::Done(self.call(method, args))
    }

    /// The archived state for a checkpoint; `None` when the type cannot checkpoint.
    fn save(&self) -> Option<Result<Vec<u8>, CallError>> {
        None
    }
}

/// Builds an actor from its archived constructor arguments.
pub type Constructor = fn(&[u8]) -> Result<Box<dyn ActorInstance>, CallError>;

/// An actor type, as `#[ember::actor]` registers it.
pub struct ActorEntry {
    /// The unique name: the type's module path and name.
    pub name: &'static str,
    /// Decodes the constructor's arguments and builds the actor.
    pub construct: Constructor,
    /// Rebuilds the actor from the archived state of a checkpoint; `None` when the type
    /// cannot checkpoint.
    pub restore: Option<Constructor>,
}

impl fmt::Debug for TaskEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskEntry")
            .field("name", &self.name)
            .finish()
    }
}

impl fmt::Debug for ActorEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActorEntry")
            .field("name", &self.name)
            .finish()
    }
}

inventory::collect!(TaskEntry);
inventory::collect!(ActorEntry);

/// The task function registered under `name`.
pub fn task(name: &str) -> Option<&'static TaskEntry> {
    inventory::iter::<TaskEntry>
        .into_iter()
        .find(|e| e.name == name)
}

/// The actor types every worker has, whatever its executable.
fn builtin_actors() -> impl Iterator<Item = &'static ActorEntry> {
    [&crate::gpu_actor::ENTRY].into_iter()
}

/// Every actor type: the built-in ones, then those registered by `#[ember::actor]`.
fn actors() -> impl Iterator<Item = &'static ActorEntry> {
    builtin_actors().chain(inventory::iter::<ActorEntry>)
}

/// The actor type registered under `name`.
pub fn actor(name: &str) -> Option<&'static ActorEntry> {
    actors().find(|e| e.name == name)
}

/// Every registered task name, sorted.
pub fn task_names() -> Vec<String> {
    let mut v: Vec<String> = inventory::iter::<TaskEntry>
        .into_iter()
        .map(|e| e.name.to_string())
        .collect();
    v.sort();
    v
}

/// Every registered actor type name, sorted.
pub fn actor_names() -> Vec<String> {
    let mut v: Vec<String> = actors().map(|e| e.name.to_string()).collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu_actor::GPU_ACTOR;

    #[test]
    fn every_worker_has_the_gpu_actor() {
        assert!(actor_names().contains(&GPU_ACTOR.to_string()));
        let entry = actor(GPU_ACTOR).expect("the GPU actor is registered");
        assert!(entry.restore.is_none());
        assert!(actor("ember::NoSuchActor").is_none());
    }
}
