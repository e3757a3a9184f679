//! Executor processes started before an actor needs them. Starting an executor (spawn, exec,
//! loading the executable, connecting back) is most of what creating an actor costs, so once
//! an actor takes an executor for a GPU set, the worker starts the next one for that set at
//! once: the next actor asking for the same GPUs finds a process started and connected (or
//! still starting, and waits only for what remains), instead of starting one itself.
//!
//! A warm executor is started exactly as a cold one (`Executor::spawn`: the same spawner
//! thread, so it dies with its worker; `CUDA_VISIBLE_DEVICES` set to its GPU set) and hosts
//! nothing until it is taken, so an actor only ever takes one started for exactly its GPUs, and
//! it gets its allocation (GPU shares, GPU memory) with its creation as any actor does. Each is
//! taken at most once: taking removes it from the list.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::pool::Executor;
use crate::context::GpuKind;

/// How many executors wait at most, over all GPU sets: the oldest set's makes way for a new
/// set's.
pub(crate) const WARM_LIMIT: usize = 2;

/// An executor on its way up (or up), for actors that see exactly `cuda_visible`.
struct Warm {
    cuda_visible: String,
    /// Resolves once the process connected (or failed to start). Dropping it kills the process.
    started: oneshot::Receiver<std::io::Result<Arc<Executor>>>,
}

/// The warm executors of one worker, oldest first; `None` once shut down.
pub(crate) struct WarmExecutors {
    dir: PathBuf,
    gpu_kind: GpuKind,
    limit: usize,
    waiting: Mutex<Option<VecDeque<Warm>>>,
}

impl WarmExecutors {
    /// No warm executor yet; those started later put their sockets in `dir` and are told their
    /// GPUs are of kind `gpu_kind`. At most `limit` wait at once.
    pub(crate) fn new(dir: PathBuf, gpu_kind: GpuKind, limit: usize) -> Self {
        WarmExecutors {
            dir,
            gpu_kind,
            limit,
            waiting: Mutex::new(Some(VecDeque::new())),
        }
    }

    /// Takes the executor started ahead for exactly `cuda_visible`, if there is one, and starts
    /// the next one for that set. The executor may still be starting: await it with
    /// [`Taken::ready`].
    pub(crate) fn take_and_refill(&self, cuda_visible: &str) -> Option<Taken> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let list = waiting.as_mut()?;
        let taken = list
            .iter()
            .position(|w| w.cuda_visible == cuda_visible)
            .and_then(|i| list.remove(i))
            .map(|w| Taken { started: w.started });
        if self.limit > 0 {
            if list.len() >= self.limit {
                // Dropping it kills its process, started or not.
                list.pop_front();
            }
            list.push_back(self.start(cuda_visible));
        }
        taken
    }

    /// Starts an executor for `cuda_visible` in the background.
    fn start(&self, cuda_visible: &str) -> Warm {
        let (tx, started) = oneshot::channel();
        let (dir, gpu_kind, cuda) = (self.dir.clone(), self.gpu_kind, cuda_visible.to_string());
        tokio::spawn(async move {
            let result = Executor::spawn(&dir, &cuda, gpu_kind).await;
            if let Err(e) = &result {
                tracing::warn!(cuda_visible = %cuda, "cannot start a warm executor: {e}");
            }
            if let Err(Ok(unwanted)) = tx.send(result) {
                // Dropped from the list (or shut down) while it started.
                unwanted.kill().await;
            }
        });
        Warm {
            cuda_visible: cuda_visible.to_string(),
            started,
        }
    }

    /// Starts no more, and kills those that wait (those still starting are killed by their
    /// starting task once they are up).
    pub(crate) async fn shutdown(&self) {
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        for mut warm in waiting {
            warm.started.close();
            if let Ok(Ok(exec)) = warm.started.try_recv() {
                exec.kill().await;
            }
        }
    }
}

/// A warm executor taken for one actor.
pub(crate) struct Taken {
    started: oneshot::Receiver<std::io::Result<Arc<Executor>>>,
}

impl Taken {
    /// The executor once it is up and alive; `None` if it failed to start or died while it
    /// waited (the caller then starts one itself).
    pub(crate) async fn ready(self) -> Option<Arc<Executor>> {
        match self.started.await {
            Ok(Ok(exec)) if exec.is_alive() => Some(exec),
            Ok(Ok(_)) => {
                tracing::warn!("a warm executor died while it waited: starting another");
                None
            }
            Ok(Err(_)) | Err(_) => None,
        }
    }
}
