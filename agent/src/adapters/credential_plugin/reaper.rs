//! Reaping what plugins leave behind. A plugin's grandchild that outlives its parent is reparented
//! to the nearest child subreaper, else to PID 1; in a container `pullgate run` is PID 1, and
//! nothing but the agent would ever wait for such a process, so every one that exits would stay a
//! zombie. [`start`] makes the agent a child subreaper (`PR_SET_CHILD_SUBREAPER`, so that it is the
//! one such orphans come to even when it is not PID 1) and runs the reaper: on every `SIGCHLD`
//! (and every [`SWEEP_INTERVAL`], in case signals coalesce) it reaps each exited child of the
//! agent that no one waits for.
//!
//! The plugins themselves are tokio's to wait for: [`Registration::spawn`] starts one and
//! registers its pid under the same lock the reaper takes before it reaps, and the pid stays
//! registered until tokio has reaped it (or given up on it), so the reaper never takes a plugin's
//! exit from tokio, and a pid is never reaped by mistake after being reused by a new plugin.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the reaper sweeps without a `SIGCHLD`.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The pids of the plugins tokio is waiting for.
static LIVE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn live() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A plugin's registration with the reaper: declare it before the child, so that it is dropped
/// after it (Rust drops locals in reverse order), when tokio is done with the child.
#[derive(Default)]
pub(super) struct Registration(Option<u32>);

impl Registration {
    /// Starts `command` and registers its pid, both under the reaper's lock.
    pub fn spawn(
        &mut self,
        command: &mut tokio::process::Command,
    ) -> std::io::Result<tokio::process::Child> {
        let mut live = live();
        let child = command.spawn()?;
        if let Some(pid) = child.id() {
            live.insert(pid);
            self.0 = Some(pid);
        }
        Ok(child)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            live().remove(&pid);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot make the agent a child subreaper (prctl PR_SET_CHILD_SUBREAPER): {0}")]
pub struct ReaperError(std::io::Error);

/// Makes this process a child subreaper and starts the reaper task, which runs until `cancel`.
/// For `pullgate run`, at its start (it needs a tokio runtime).
pub fn start(cancel: CancellationToken) -> Result<tokio::task::JoinHandle<()>, ReaperError> {
    #[allow(unsafe_code)]
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) sets a flag of this process; it reads and writes
    // no memory of ours.
    let set = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if set != 0 {
        return Err(ReaperError(std::io::Error::last_os_error()));
    }
    let mut children = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        .map_err(ReaperError)?;
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = children.recv() => {}
                _ = tick.tick() => {}
            }
            let reaped = tokio::task::spawn_blocking(sweep).await.unwrap_or(0);
            if reaped > 0 {
                tracing::debug!(
                    reaped,
                    "reaped exited processes left behind by credential plugins"
                );
            }
        }
    }))
}

/// Reaps every exited child of this process whose pid is not a registered plugin's; how many.
pub fn sweep() -> usize {
    let me = std::process::id();
    // Found without the lock (reading /proc takes a while); reaped under it, each checked again.
    let zombies = zombie_children(me);
    if zombies.is_empty() {
        return 0;
    }
    let live = live();
    let mut reaped = 0;
    for pid in zombies {
        if live.contains(&pid) {
            continue;
        }
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            continue;
        };
        let mut status = 0;
        #[allow(unsafe_code)]
        // SAFETY: waitpid(2) writes only `status`, a local. `pid` is not a registered plugin's
        // (checked under the lock every spawn takes), so no one else waits for it; WNOHANG never
        // blocks, and a pid that is not (or no longer) our child is refused with ECHILD.
        let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if done == pid {
            reaped += 1;
        }
    }
    reaped
}

/// The pids of `/proc` whose parent is `parent` and whose state is zombie.
fn zombie_children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parent_and_state(&stat))
                .is_some_and(|(ppid, state)| ppid == parent && state == 'Z')
        })
        .collect()
}

/// The parent pid and the state of a `/proc/PID/stat` line (the command, field 2, may hold spaces
/// and parentheses: the fields after it start after its last `)`).
fn parent_and_state(stat: &str) -> Option<(u32, char)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((ppid, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines() {
        for (line, expected) in [
            ("42 (sleep) Z 7 42 42 0 -1", Some((7, 'Z'))),
            ("43 (a) b) (c) S 1 43 43", Some((1, 'S'))),
            ("44 (x) R", None),
            ("garbage", None),
        ] {
            assert_eq!(parent_and_state(line), expected, "{line}");
        }
    }
}
