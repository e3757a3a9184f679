//! Running a provider's external command (a user's launch or stop script, `sbatch`,
//! `scancel`) to its end, within a time limit, and keeping what it printed.
//!
//! Its standard output and error go to unnamed temporary files, not pipes: a launch script
//! that leaves a worker running in the background (`nohup ember worker ... &`) hands it the
//! script's descriptors, and a pipe would then stay open (and its reader waiting) as long as
//! the worker lives. The command runs in a process group of its own, which is killed whole
//! when it runs past its limit.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How much of the end of each output is kept.
const TAIL_BYTES: u64 = 16 * 1024;

/// How many lines of its standard error a failure quotes.
const ERROR_LINES: usize = 10;

/// Why a command did not run to a successful end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ScriptError {
    /// It could not be started (not found, not executable) or its output not kept.
    #[error("cannot run {what}: {source}")]
    Start {
        /// The command, as errors name it.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// It ran past its limit, and was killed with its process group.
    #[error("{what} did not finish within {limit:?}, and was killed{}", quoted(.stderr))]
    TimedOut {
        /// The command, as errors name it.
        what: String,
        /// The limit.
        limit: Duration,
        /// The end of its standard error.
        stderr: String,
    },
    /// It ended with a failure.
    #[error("{what} failed ({status}){}", quoted(.stderr))]
    Failed {
        /// The command, as errors name it.
        what: String,
        /// How it ended.
        status: ExitStatus,
        /// The end of its standard error.
        stderr: String,
    },
}

/// `: TEXT`, or nothing when `text` is empty.
fn quoted(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// What a command that succeeded printed (the ends of its outputs).
#[derive(Debug)]
pub(crate) struct Printed {
    /// The end of its standard output.
    pub(crate) stdout: String,
    /// The end of its standard error.
    pub(crate) stderr: String,
}

impl Printed {
    /// The last non-empty line of its standard output, trimmed.
    pub(crate) fn last_line(&self) -> Option<&str> {
        self.stdout
            .lines()
            .map(str::trim)
            .rev()
            .find(|l| !l.is_empty())
    }
}

/// A name for a command in errors: its first line, shortened.
pub(crate) fn describe(command: &str) -> String {
    let first = command.trim().lines().next().unwrap_or_default();
    let mut short: String = first.chars().take(80).collect();
    if short.len() < first.len() || command.trim().lines().nth(1).is_some() {
        short.push_str(" ...");
    }
    format!("`{short}`")
}

/// Runs `command` (whose arguments and environment are set) to its end, within `limit`,
/// writing `stdin` to it when given (else it reads nothing); `what` names it in errors.
pub(crate) fn run(
    mut command: Command,
    what: &str,
    stdin: Option<Vec<u8>>,
    limit: Duration,
) -> Result<Printed, ScriptError> {
    let start_error = |source: std::io::Error| ScriptError::Start {
        what: what.to_string(),
        source,
    };
    let mut stdout = tempfile::tempfile().map_err(start_error)?;
    let mut stderr = tempfile::tempfile().map_err(start_error)?;
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(stdout.try_clone().map_err(start_error)?)
        .stderr(stderr.try_clone().map_err(start_error)?)
        .process_group(0);
    let mut child = command.spawn().map_err(start_error)?;
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let input = child.stdin.take();
    let (done, ended) = mpsc::channel();
    std::thread::spawn(move || {
        if let (Some(mut pipe), Some(bytes)) = (input, stdin) {
            // A command that exits without reading it all closes the pipe: not an error here,
            // its exit status says how it went.
            let _ = pipe.write_all(&bytes);
        }
        let _ = done.send(child.wait());
    });
    let status = match ended.recv_timeout(limit) {
        Ok(status) => status.map_err(start_error)?,
        Err(_) => {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
            // Reaped by the waiting thread, which the kill ends.
            let _ = ended.recv();
            return Err(ScriptError::TimedOut {
                what: what.to_string(),
                limit,
                stderr: last_lines(&tail(&mut stderr)),
            });
        }
    };
    let printed = Printed {
        stdout: tail(&mut stdout),
        stderr: tail(&mut stderr),
    };
    if !status.success() {
        return Err(ScriptError::Failed {
            what: what.to_string(),
            status,
            stderr: last_lines(&printed.stderr),
        });
    }
    Ok(printed)
}

/// The last [`TAIL_BYTES`] of `file`, as text.
fn tail(file: &mut File) -> String {
    let mut bytes = Vec::new();
    let read = file
        .seek(SeekFrom::End(0))
        .and_then(|end| file.seek(SeekFrom::Start(end.saturating_sub(TAIL_BYTES))))
        .and_then(|_| file.read_to_end(&mut bytes));
    match read {
        Ok(_) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("(its output could not be read back: {e})"),
    }
}

/// The last [`ERROR_LINES`] non-empty lines of `text`, on one line.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(ERROR_LINES)..].join(" / ")
}

/// `words` as one line for `sh`: each word left bare when that is safe, else single-quoted.
pub(crate) fn shell_join<I, S>(words: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let quoted: Vec<String> = words.into_iter().map(|w| shell_quote(w.as_ref())).collect();
    quoted.join(" ")
}

/// One word for `sh`.
pub(crate) fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:=,+@%".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Shows a command's program and arguments, for logs.
pub(crate) struct CommandLine<'a>(pub(crate) &'a Command);

impl fmt::Display for CommandLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let program = self.0.get_program().to_string_lossy();
        let args = self.0.get_args().map(|a| a.to_string_lossy());
        f.write_str(&shell_join(std::iter::once(program).chain(args)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn the_last_non_empty_line_of_stdout_is_kept() {
        let printed = run(
            sh("echo starting; echo i-0abc; echo; echo '  ' ; echo note >&2"),
            "the script",
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(printed.last_line(), Some("i-0abc"));
        assert_eq!(printed.stderr.trim(), "note");
        let silent = run(sh("true"), "the script", None, Duration::from_secs(10)).unwrap();
        assert_eq!(silent.last_line(), None);
    }

    #[test]
    fn a_failure_names_the_command_its_status_and_the_end_of_its_stderr() {
        let e = run(
            sh("for i in $(seq 1 30); do echo line $i >&2; done; echo 'no capacity' >&2; exit 3"),
            "the launch command `x`",
            None,
            Duration::from_secs(10),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("the launch command `x` failed (exit status: 3): line 22 / "),
            "{e}"
        );
        assert!(e.ends_with("line 30 / no capacity"), "{e}");
        assert!(!e.contains("line 21 "), "only the last lines: {e}");
    }

    #[test]
    fn a_background_child_holding_the_outputs_does_not_hold_the_caller() {
        // The script leaves a child with its stdout and stderr, as a launch script leaves a
        // worker; it is answered as soon as the script itself ends.
        let started = Instant::now();
        let printed = run(
            sh("sleep 30 & echo $!"),
            "the script",
            None,
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid: i32 = printed.last_line().unwrap().parse().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }

    #[test]
    fn a_command_past_its_limit_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child");
        let script = format!(
            "sleep 60 & echo $! > {}; echo waiting >&2; wait",
            pid_file.display()
        );
        let started = Instant::now();
        let e = run(sh(&script), "the script", None, Duration::from_millis(500)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            matches!(&e, ScriptError::TimedOut { stderr, .. } if stderr == "waiting"),
            "{e}"
        );
        assert!(e.to_string().contains("did not finish within 500ms"), "{e}");
        let child: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Its background child was in its process group, and was sent SIGKILL too. Not a
        // child of ours, it cannot be waited for; it is gone (a zombie at most, until init
        // reaps it) once the kernel has run its exit, which a loaded machine may delay.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                break;
            }
            assert!(Instant::now() < deadline, "still running: {stat}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn stdin_is_given_when_asked_and_a_missing_program_is_named() {
        let printed = run(
            Command::new("cat"),
            "cat",
            Some(b"#!/bin/sh\nexec true\n".to_vec()),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(printed.stdout, "#!/bin/sh\nexec true\n");
        let e = run(
            Command::new("/nonexistent/sbatch"),
            "`/nonexistent/sbatch`",
            None,
            Duration::from_secs(10),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("cannot run `/nonexistent/sbatch`: "), "{e}");
    }

    #[test]
    fn words_are_quoted_for_sh_and_come_back_whole() {
        assert_eq!(shell_quote("--cpus"), "--cpus");
        assert_eq!(shell_quote("127.0.0.1:7700"), "127.0.0.1:7700");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let words = ["/opt/my ember/ember", "a'b", "$HOME", "x;y", "sha256:ab"];
        let line = shell_join(words);
        let printed = run(
            sh(&format!("printf '%s\\n' {line}")),
            "printf",
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(printed.stdout.lines().collect::<Vec<_>>(), words);
    }

    #[test]
    fn commands_are_described_by_their_first_line() {
        assert_eq!(describe("./launch.sh"), "`./launch.sh`");
        assert_eq!(describe("set -e\n./launch.sh"), "`set -e ...`");
        let long = "x".repeat(100);
        assert_eq!(describe(&long), format!("`{} ...`", "x".repeat(80)));
    }
}
