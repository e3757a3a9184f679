//! Batch jobs: a command run on this worker with its GPUs, its output streamed back.

use ember_core::ids::{JobId, NodeId};
use ember_core::proto::{write_frame, JobEvent, WorkerReply};
use ember_core::resources::Allocation;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::mpsc;

/// Runs `command` with `CUDA_VISIBLE_DEVICES` and `EMBER_NODE_ID` set, writing its output and
/// its exit code to `out` as job events. A command that cannot start exits with code 127. The
/// head cancels the job by resetting `cancel` (the command's stream): the command is killed and
/// its exit code still reported, so that the head frees its resources only once it is gone.
pub(crate) async fn run(
    node: NodeId,
    job: JobId,
    command: Vec<String>,
    env: Vec<(String, String)>,
    allocation: Allocation,
    out: &mut quinn::SendStream,
    cancel: &mut quinn::RecvStream,
) {
    let started = JobEvent::Started {
        job,
        node,
        allocation: allocation.clone(),
    };
    if write_frame(out, &WorkerReply::Job(started)).await.is_err() {
        return;
    }
    let Some((program, args)) = command.split_first() else {
        let msg = b"ember: the job has no command\n".to_vec();
        let _ = write_frame(out, &WorkerReply::Job(JobEvent::Stderr(msg))).await;
        let _ = write_frame(out, &WorkerReply::Job(JobEvent::Exited(127))).await;
        return;
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env)
        .env("CUDA_VISIBLE_DEVICES", allocation.cuda_visible_devices())
        .env("EMBER_NODE_ID", node.to_string())
        .env("EMBER_JOB_ID", job.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    kill_with_worker(&mut cmd);
    // From the spawner thread, which lives as long as the worker: `PR_SET_PDEATHSIG` fires
    // when the thread that started the child exits.
    let spawned = crate::executor::spawn_child(cmd).await;
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("ember: cannot start `{program}`: {e}\n").into_bytes();
            let _ = write_frame(out, &WorkerReply::Job(JobEvent::Stderr(msg))).await;
            let _ = write_frame(out, &WorkerReply::Job(JobEvent::Exited(127))).await;
            return;
        }
    };
    tracing::info!(%job, %node, "job started: {}", command.join(" "));
    let (tx, mut rx) = mpsc::channel::<JobEvent>(64);
    let pipes = [
        child.stdout.take().map(|p| {
            (
                Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                true,
            )
        }),
        child.stderr.take().map(|p| {
            (
                Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                false,
            )
        }),
    ];
    for (mut pipe, is_stdout) in pipes.into_iter().flatten() {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let chunk = buf[..n].to_vec();
                        let ev = if is_stdout {
                            JobEvent::Stdout(chunk)
                        } else {
                            JobEvent::Stderr(chunk)
                        };
                        if tx.send(ev).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(tx);
    let mut watch_cancel = true;
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    if write_frame(out, &WorkerReply::Job(ev)).await.is_err() {
                        // The head is gone: stop the job rather than run it unobserved.
                        let _ = child.kill().await;
                        break;
                    }
                }
                None => break,
            },
            reset = cancel.received_reset(), if watch_cancel => match reset {
                Ok(Some(_)) | Err(_) => {
                    tracing::info!(%job, "job cancelled: its client left");
                    let _ = child.kill().await;
                    break;
                }
                // The head finished its side: nothing more will come from it.
                Ok(None) => watch_cancel = false,
            },
        }
    }
    let code = match child.wait().await {
        Ok(status) => exit_code(status),
        Err(_) => 1,
    };
    tracing::info!(%job, code, "job exited");
    let _ = write_frame(out, &WorkerReply::Job(JobEvent::Exited(code))).await;
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Makes the job's process die with its worker (`PR_SET_PDEATHSIG`, SIGKILL), so that a
/// worker killed outright leaves no job holding its GPUs; a job whose worker died between
/// fork and exec does not start.
fn kill_with_worker(cmd: &mut Command) {
    let worker = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec and makes only the
    // `prctl` and `getppid` system calls, which are async-signal-safe; it allocates nothing
    // on success.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)?;
            if nix::unistd::getppid() != worker {
                return Err(std::io::Error::other("the worker is gone"));
            }
            Ok(())
        });
    }
}
