//! Descriptions of remote work, built by the generated `remote(..)` functions.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use ember_core::proto::{encode, Wire};

use crate::{Error, Options};

/// Marks a [`Remote`] as one call of a task function.
#[derive(Debug)]
pub enum Task {}

/// Marks a [`Remote`] as the creation of an actor.
#[derive(Debug)]
pub enum Actor {}

/// Remote work described with its resource needs: what the generated `remote(..)` functions
/// return. `K` says what kind of work ([`Task`] or [`Actor`]); `T` is what it yields, a task's
/// result or an actor's typed handle.
#[derive(Debug)]
pub struct Remote<K, T> {
    pub(crate) name: &'static str,
    pub(crate) args: Result<Vec<u8>, String>,
    pub(crate) options: Options,
    _kind: PhantomData<fn() -> (K, T)>,
}

/// One call of a task function, with its resource needs; `T` is what it returns.
pub type TaskCall<T> = Remote<Task, T>;

/// The creation of one actor, with its resource needs; `H` is its typed handle.
pub type ActorSpawn<H> = Remote<Actor, H>;

impl<K, T> Remote<K, T> {
    /// Work on the task function or actor type registered as `name`, with archived `args`.
    pub fn new<A: Wire>(name: &'static str, args: &A, options: Options) -> Self {
        Remote {
            name,
            args: encode(args).map(|a| a.to_vec()).map_err(|e| e.to_string()),
            options,
            _kind: PhantomData,
        }
    }

    /// Changes the declared needs for this call, e.g. `.with(|o| o.gpus(1.0))`.
    pub fn with(mut self, change: impl FnOnce(Options) -> Options) -> Self {
        self.options = change(self.options);
        self
    }

    /// Replaces the declared needs for this call.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }
}

/// A submitted task's result, to await. The task runs whether or not it is awaited.
#[derive(Debug)]
pub struct TaskRef<T> {
    pub(crate) handle: tokio::task::JoinHandle<Result<T, Error>>,
}

impl<T> Future for TaskRef<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.handle).poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            Poll::Ready(Err(e)) => Poll::Ready(Err(Error::ConnectionLost(format!(
                "the task's request was dropped: {e}"
            )))),
            Poll::Pending => Poll::Pending,
        }
    }
}
