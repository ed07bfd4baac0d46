//! A process seen from `/proc`: alive or not, resident and peak memory, threads, open file
//! descriptors, CPU ticks. Used by the reliability tests (a memory cap, a resource bound, never a
//! timing), the idle benchmark and the soak.

use anyhow::{Context as _, Result};
use std::time::Instant;

/// One reading of `/proc/PID`: resident and peak memory (KiB), threads, open file descriptors and
/// CPU ticks (user + system, in [`clock_ticks`] per second).
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    pub at: Instant,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
    pub fds: usize,
    pub ticks: u64,
}

/// Reads `/proc/PID/status`, `/proc/PID/stat` and `/proc/PID/fd`.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let at = Instant::now();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status (did the process exit?)"))?;
    let field = |name: &str| -> u64 { number(status_value(&status, name)).unwrap_or(0) };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("list /proc/{pid}/fd"))?
        .count();
    Ok(ProcSample {
        at,
        rss_kib: field("VmRSS"),
        hwm_kib: field("VmHWM"),
        threads: field("Threads"),
        fds,
        ticks: cpu_ticks(&pid.to_string()),
    })
}

/// A field of `/proc/PID/status` (`VmHWM`, `State`…), its value trimmed (`"35120 kB"`).
pub fn status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_value(&status, field).map(str::to_string)
}

fn status_value<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

fn number(value: Option<&str>) -> Option<u64> {
    value?.split_whitespace().next()?.parse().ok()
}

/// True while the process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    status_field(pid, "State").is_some_and(|s| !s.starts_with('Z') && !s.starts_with('X'))
}

/// The parent of a process (`PPid`), while it exists (a zombie included).
pub fn parent(pid: u32) -> Option<u32> {
    number(status_field(pid, "PPid").as_deref()).and_then(|p| u32::try_from(p).ok())
}

/// True while `/proc/PID` exists: running, or a zombie no one has reaped.
pub fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The zombie children of `parent`: exited, and not reaped by it.
pub fn zombie_children(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            self::parent(pid) == Some(parent)
                && status_field(pid, "State").is_some_and(|s| s.starts_with('Z'))
        })
        .collect()
}

/// Peak resident memory of the process so far (`VmHWM`), in KiB.
pub fn peak_kib(pid: u32) -> Result<u64> {
    number(status_field(pid, "VmHWM").as_deref())
        .with_context(|| format!("no VmHWM for pid {pid} (has it exited?)"))
}

/// CPU ticks (user + system) a process (`self`, or a PID) has used so far; 0 when it is gone.
pub fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| -> u64 { rest.get(i).and_then(|v| v.parse().ok()).unwrap_or(0) };
    tick(11) + tick(12)
}

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`; 100 on Linux).
pub fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// KiB as MiB, for reports.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
