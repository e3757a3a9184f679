//! Actors that save their state, so that they come back with it after losing their process.

use ember_core::proto::Wire;

/// An actor type whose state can be saved and restored. Implement it, and declare the actor
/// with `#[ember::actor(checkpoint, ..)]` (or a policy: `checkpoint_every = N` calls,
/// `checkpoint_interval_ms = T`). The head keeps the newest checkpoints on its disk, so they
/// outlive the worker that made them; an actor with restarts left comes back from the newest
/// one after its worker dies, and a drain moves it with its state.
///
/// ```
/// #[derive(Debug)]
/// pub struct Counter { count: u64 }
///
/// impl ember::Checkpoint for Counter {
///     type State = u64;
///     fn save(&self) -> u64 { self.count }
///     fn restore(count: u64) -> Self { Counter { count } }
/// }
///
/// #[ember::actor(checkpoint_every = 1, max_restarts = -1)]
/// impl Counter {
///     pub fn new() -> Self { Counter { count: 0 } }
///     pub fn add(&mut self, n: u64) -> u64 { self.count += n; self.count }
/// }
/// ```
pub trait Checkpoint: Sized {
    /// What is saved: any type that travels (derive rkyv's `Archive`, `Serialize` and
    /// `Deserialize` for your own).
    type State: Wire;

    /// The state to save, taken between calls.
    fn save(&self) -> Self::State;

    /// The actor rebuilt from saved state.
    fn restore(state: Self::State) -> Self;
}
