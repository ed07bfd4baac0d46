//! Running one plugin: its own process group, stdin written, stdout and stderr read as they come
//! (at most [`OUTPUT_CAP`] bytes each), a deadline, and cancellation. On a timeout, an overflow or
//! cancellation the whole group is killed while the plugin is not yet reaped (so the group's id is
//! still its own), then the plugin is reaped. While it runs, its pid is registered with the
//! [`reaper`](super::reaper) so that the agent's own reaping of orphans never takes it from tokio.

use super::reaper;
use secrecy::SecretString;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// The most a plugin may write to stdout, and to stderr (a credential response is a few KiB).
pub const OUTPUT_CAP: usize = 1 << 20;
/// The most of a plugin's stderr that goes into the agent's log, in characters.
const STDERR_EXCERPT_CHARS: usize = 300;

/// What a plugin run produced.
pub(super) struct PluginOutput {
    pub status: std::process::ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A plugin run that did not finish on its own, with what the plugin wrote to stderr by then.
pub(super) struct RunFailure {
    pub stderr: Vec<u8>,
    pub kind: RunFailureKind,
}

pub(super) enum RunFailureKind {
    /// Could not start, feed or wait for the process.
    Spawn(std::io::Error),
    Timeout,
    /// `stdout` or `stderr`: more than [`OUTPUT_CAP`] bytes.
    TooMuchOutput(&'static str),
    /// The agent is shutting down.
    Cancelled,
}

/// Runs a plugin in its own process group: writes `stdin`, reads stdout and stderr up to
/// [`OUTPUT_CAP`] each, and waits for it to exit, all within `timeout` and until `cancel`. When it
/// times out, writes too much or is cancelled (or this future is dropped), its process group is
/// killed while the plugin is not yet reaped, then the plugin is reaped.
pub(super) async fn run_plugin(
    mut command: tokio::process::Command,
    stdin: Vec<u8>,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<PluginOutput, RunFailure> {
    if cancel.is_cancelled() {
        return Err(RunFailure {
            stderr: Vec::new(),
            kind: RunFailureKind::Cancelled,
        });
    }
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // Declared before the child, so dropped after it: the pid stays registered (and is not reaped
    // by the agent's reaper) until tokio is done with the child, even when this future is dropped.
    let mut registered = reaper::Registration::default();
    let mut child = registered.spawn(&mut command).map_err(|e| RunFailure {
        stderr: Vec::new(),
        kind: RunFailureKind::Spawn(e),
    })?;
    // Its own group's id is its pid (`process_group(0)`); `id()` is `Some` until it is reaped.
    let mut group = GroupKill(child.id().and_then(|id| libc::pid_t::try_from(id).ok()));
    let stdin_pipe = child.stdin.take();
    let stdout_pipe = child.stdout.take();
    let stderr_pipe = child.stderr.take();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let talk = async {
        if let Some(mut pipe) = stdin_pipe {
            // A plugin that does not read its stdin is its own business; its answer still counts.
            let _ = pipe.write_all(&stdin).await;
            // Dropped here: the plugin sees the end of its input.
        }
        // To the end of both pipes first: a grandchild still holding one keeps the plugin
        // unfinished (and killable as a group) until the deadline.
        tokio::try_join!(
            read_capped(stdout_pipe, "stdout", &mut stdout),
            read_capped(stderr_pipe, "stderr", &mut stderr),
        )?;
        child.wait().await.map_err(RunFailureKind::Spawn)
    };
    let outcome = tokio::select! {
        () = cancel.cancelled() => Err(RunFailureKind::Cancelled),
        done = tokio::time::timeout(timeout, talk) => match done {
            Ok(Ok(status)) => {
                // Reaped: its pid, hence the group's id, may be reused now. Nothing more to kill.
                group.0 = None;
                Ok(status)
            }
            Ok(Err(kind)) => Err(kind),
            Err(_) => Err(RunFailureKind::Timeout),
        },
    };
    let status = match outcome {
        Ok(status) => status,
        Err(kind) => {
            // Not reaped yet (its `wait` did not complete), so the group's id is still its own.
            group.kill();
            // In case the plugin left its own group.
            let _ = child.start_kill();
            let _ = child.wait().await;
            group.0 = None;
            return Err(RunFailure { stderr, kind });
        }
    };
    Ok(PluginOutput {
        status,
        stdout,
        stderr,
    })
}

/// Reads `pipe` to its end into `buf`, as it comes, but never more than [`OUTPUT_CAP`] bytes.
async fn read_capped(
    pipe: Option<impl AsyncRead + Unpin>,
    stream: &'static str,
    buf: &mut Vec<u8>,
) -> Result<(), RunFailureKind> {
    let Some(pipe) = pipe else { return Ok(()) };
    // One byte over the cap tells an overflow from an answer of exactly the cap.
    pipe.take(OUTPUT_CAP as u64 + 1)
        .read_to_end(buf)
        .await
        .map_err(RunFailureKind::Spawn)?;
    if buf.len() > OUTPUT_CAP {
        buf.truncate(OUTPUT_CAP);
        return Err(RunFailureKind::TooMuchOutput(stream));
    }
    Ok(())
}

/// Kills the process group of a plugin that is not reaped yet, when asked or when dropped (the
/// plugin's future cancelled); `None` once the plugin is reaped, as its pid may then be reused.
struct GroupKill(Option<libc::pid_t>);

impl GroupKill {
    fn kill(&self) {
        let Some(pgid) = self.0.filter(|p| *p > 1) else {
            return;
        };
        // std and tokio can signal one process, not a group. ESRCH (no member left) is fine.
        #[allow(unsafe_code)]
        // SAFETY: kill(2) touches no memory; -pgid names the group of our child, which is not
        // reaped yet (so no other group can have that id) and is never 0 or 1 (filtered above).
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A short, single-line excerpt of a plugin's stderr for the agent's log: lossy UTF-8, control
/// characters as spaces, at most [`STDERR_EXCERPT_CHARS`] characters, every `secrets` value (of 4
/// characters or more) replaced. Empty when the plugin wrote nothing but whitespace.
pub(super) fn stderr_excerpt(stderr: &[u8], secrets: &[SecretString]) -> String {
    // Scrubbed before it is cut, so that no secret survives in part at the cut.
    let text: String = String::from_utf8_lossy(stderr)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let scrubbed = crate::decide::secret_scrub::scrub(text.trim(), secrets);
    let mut excerpt: String = scrubbed.chars().take(STDERR_EXCERPT_CHARS).collect();
    if excerpt.len() < scrubbed.len() {
        excerpt.push('…');
    }
    excerpt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_excerpts_are_short_single_line_and_scrubbed() {
        let secrets = [
            SecretString::from("env-Token-1234"),
            SecretString::from("abc"),
        ];
        let long = "x".repeat(1000);
        for (input, expected) in [
            ("", String::new()),
            ("  \n\t ", String::new()),
            (
                "token env-Token-1234 refused\nretry\x1b[31m",
                "token [REDACTED] refused retry [31m".to_string(),
            ),
            (
                "abc is too short to scrub",
                "abc is too short to scrub".into(),
            ),
            (long.as_str(), format!("{}…", "x".repeat(300))),
        ] {
            assert_eq!(
                stderr_excerpt(input.as_bytes(), &secrets),
                expected,
                "{input:?}"
            );
        }
        // Invalid UTF-8 and a secret at the cut: lossy, and no part of the secret survives.
        let mut bytes = vec![0xff];
        bytes.extend("y".repeat(295).bytes());
        bytes.extend(b"env-Token-1234");
        let excerpt = stderr_excerpt(&bytes, &secrets);
        assert!(excerpt.starts_with('\u{fffd}'), "{excerpt}");
        assert!(!excerpt.contains("env-T"), "{excerpt}");
    }
}
