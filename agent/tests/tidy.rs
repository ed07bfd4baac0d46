//! The house rules that hold the architecture (rust-analyzer keeps one of these): the folders of
//! `agent/src` are the map in ARCHITECTURE.md, and this test fails, naming the file, the line and
//! the name, when code moves against it.
//!
//! - `model/` and `decide/` are pure: they name no adapter crate, nothing of `adapters/`,
//!   `daemon/`, `commands/` or `cli`, touch no file or socket, and run no process.
//! - Each adapter crate is known by its own adapter module(s) only.
//! - Only the credential-plugin adapter runs processes.
//! - `daemon/` does not depend on `commands/`, nor `adapters/` on `daemon/` or `commands/`.
//! - Some rules have one home: code elsewhere does not call what only that home may.

use std::path::{Path, PathBuf};

/// Crates that only adapters (and the CLI) may name, with the files or folders that may.
const ADAPTER_CRATES: &[(&str, &[&str])] = &[
    ("kube", &["adapters/kube/"]),
    (
        "tonic",
        &[
            "adapters/cri.rs",
            "adapters/serve/local_api.rs",
            "adapters/containerd/",
        ],
    ),
    ("containerd_client", &["adapters/containerd/"]),
    ("prost_types", &["adapters/containerd/"]),
    ("k8s_cri", &["adapters/cri.rs"]),
    ("reqwest", &["adapters/registry/"]),
    ("axum", &["adapters/serve/http.rs"]),
    ("prometheus_client", &["adapters/serve/metrics.rs"]),
    ("clap", &["cli.rs", "main.rs"]),
    ("notify", &["adapters/files/watch.rs"]),
    // What std and tokio cannot do: SIGKILL to a plugin's process group, making the agent a
    // child subreaper, and reaping the orphans plugins leave behind; statvfs of the image
    // filesystem (the disk headroom).
    (
        "libc",
        &["adapters/credential_plugin/", "adapters/statvfs.rs"],
    ),
];

/// Calls that only one file may make, and why: the rule lives there.
const ONE_HOME: &[(&str, &str, &str)] = &[(
    "humantime::format_rfc3339",
    "model/time.rs",
    "it panics before 1970 and after 9999; use model::time::rfc3339_seconds or rfc3339_millis",
)];

/// Folders whose code decides and holds data only.
const PURE: &[&str] = &["model/", "decide/"];

/// Files and sockets: the adapters' business, never a pure folder's.
const IO: &[&str] = &["std::fs", "tokio::fs", "std::net", "tokio::net"];

/// The one module that runs processes.
const PROCESS_HOME: &str = "adapters/credential_plugin/";

/// Ways to start a process.
const PROCESS: &[&str] = &[
    "std::process::Command",
    "tokio::process",
    "process::Command",
];

/// Module paths a folder must not reach, by folder.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "model/",
        &[
            "crate::decide",
            "crate::adapters",
            "crate::daemon",
            "crate::commands",
            "crate::cli",
        ],
    ),
    (
        "decide/",
        &[
            "crate::adapters",
            "crate::daemon",
            "crate::commands",
            "crate::cli",
        ],
    ),
    ("adapters/", &["crate::daemon", "crate::commands"]),
    ("daemon/", &["crate::commands"]),
];

#[test]
fn the_folders_hold_the_architecture() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 20,
        "found only {} files under {}",
        files.len(),
        src.display()
    );
    let mut broken = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(&src)
            .expect("walked from src") // rust_files only yields paths below src
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(file).expect("a source file is UTF-8");
        let lines: Vec<(usize, String)> = code_lines(&text).collect();
        for (folder, banned) in LAYERS {
            if !rel.starts_with(folder) {
                continue;
            }
            for (n, path) in crate_paths(&lines) {
                for b in *banned {
                    if names_path(&path, b) {
                        broken.push(format!(
                            "agent/src/{rel}:{n}: {folder} must not depend on `{b}`"
                        ));
                    }
                }
            }
        }
        for (n, line) in &lines {
            let at = format!("agent/src/{rel}:{n}");
            for (krate, homes) in ADAPTER_CRATES {
                if names_crate(line, krate) && !homes.iter().any(|h| rel.starts_with(h)) {
                    let pure = PURE.iter().any(|p| rel.starts_with(p));
                    let why = if pure {
                        "a pure folder"
                    } else {
                        "outside its adapter"
                    };
                    broken.push(format!(
                        "{at}: names `{krate}` ({why}; only {} may)",
                        homes.join(", ")
                    ));
                }
            }
            if PURE.iter().any(|p| rel.starts_with(p)) {
                for io in IO {
                    if line.contains(io) {
                        broken.push(format!(
                            "{at}: does I/O (`{io}`) in a pure folder; an adapter behind a trait may"
                        ));
                    }
                }
            }
            for (call, home, why) in ONE_HOME {
                if line.contains(call) && rel != *home {
                    broken.push(format!("{at}: calls `{call}`; only {home} may ({why})"));
                }
            }
            for p in PROCESS {
                if line.contains(p) && !rel.starts_with(PROCESS_HOME) {
                    broken.push(format!(
                        "{at}: runs a process (`{p}`); only {PROCESS_HOME} may"
                    ));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "the layout rules are broken (see agent/tests/tidy.rs and ARCHITECTURE.md):\n{}",
        broken.join("\n")
    );
}

/// The rules above are not vacuous: each kind of break is caught.
#[test]
fn the_rules_catch_what_they_forbid() {
    assert!(names_crate("use kube::Api;", "kube"));
    assert!(names_crate("#[derive(clap::ValueEnum)]", "clap"));
    assert!(names_crate("use tonic::{Status, Code};", "tonic"));
    assert!(names_crate("    e: reqwest::Error,", "reqwest"));
    assert!(!names_crate("use kube_core::CustomResourceExt;", "kube"));
    assert!(!names_crate("let kube = 1; // kubelet", "kube"));
    assert!(!names_crate("\"kube::Error in a string\"", "kube"));
    assert!(names_path(
        "use crate::adapters::cri::Cri;",
        "crate::adapters"
    ));
    assert!(names_crate("    ::kube::Api::all(c)", "kube"));
    assert!(!names_crate("use crate::adapters::kube::source;", "kube"));
    assert!(!names_path("use crate::adaptersx;", "crate::adapters"));
    let group = code_lines(
        "use crate::{\n    adapters::cri::{A, B},\n    model,\n};\nuse crate::daemon::run;",
    )
    .collect::<Vec<_>>();
    let paths: Vec<_> = crate_paths(&group)
        .into_iter()
        .map(|(n, p)| format!("{n}:{p}"))
        .collect();
    assert_eq!(
        paths,
        [
            "4:crate::adapters::cri",
            "4:crate::model",
            "5:crate::daemon::run"
        ]
    );
    let lines: Vec<_> =
        code_lines("//! kube::Api\nuse x; // kube::Api\n/// tonic::Status\nlet a = 1;")
            .map(|(_, l)| l.trim().to_string())
            .collect();
    assert_eq!(lines, ["", "use x;", "", "let a = 1;"]);
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Each line (1-based) with comments and string literals blanked out.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, String)> + '_ {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, strip(line)))
}

/// A line without its `//` comment and without the contents of its string literals.
fn strip(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_str = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_str => {
                chars.next();
            }
            '"' => {
                in_str = !in_str;
                out.push('"');
            }
            '/' if !in_str && chars.peek() == Some(&'/') => break,
            _ if in_str => {}
            _ => out.push(c),
        }
    }
    out
}

/// `krate::` as a path root: at the start of a path (`kube::Api`, `::kube::Api`), not a module
/// of ours (`adapters::kube::source`) nor the tail of another name (`my_kube::`); or `use krate;`.
fn names_crate(line: &str, krate: &str) -> bool {
    let line = strip(line);
    let pattern = format!("{krate}::");
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    line.match_indices(&pattern).any(|(at, _)| {
        let before = &line[..at];
        match before.strip_suffix("::") {
            // `::kube::…` is the crate; `adapters::kube::…` is a module path.
            Some(rest) => !rest.chars().next_back().is_some_and(ident),
            None => !before.chars().next_back().is_some_and(ident),
        }
    }) || line.trim() == format!("use {krate};")
        || line.contains(&format!("extern crate {krate}"))
}

/// A `crate::…` path written out (`crate::adapters::cri`, not `crate::adaptersx`).
fn names_path(line: &str, path: &str) -> bool {
    let line = strip(line);
    line.match_indices(path).any(|(at, _)| {
        !line[at + path.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// Every `crate::…` path of a file, with its line, `use crate::{a::b, c}` groups (over several
/// lines too) spelled out as `crate::a::b` and `crate::c`.
fn crate_paths(lines: &[(usize, String)]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut group: Option<(String, i32)> = None; // the text of an open group, its brace depth
    for (n, line) in lines {
        if let Some((text, depth)) = group.as_mut() {
            text.push(' ');
            text.push_str(line);
            *depth += braces(line);
            if *depth <= 0 {
                let text = std::mem::take(text);
                group = None;
                out.extend(spell_out(&text).into_iter().map(|p| (*n, p)));
            }
            continue;
        }
        if let Some((_, rest)) = line.split_once("crate::{") {
            let depth = 1 + braces(rest);
            if depth <= 0 {
                out.extend(spell_out(rest).into_iter().map(|p| (*n, p)));
            } else {
                group = Some((rest.to_string(), depth));
            }
        }
        for (at, _) in line.match_indices("crate::") {
            let tail: String = line[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            if tail.len() > "crate::".len() {
                out.push((*n, tail));
            }
        }
    }
    out
}

fn braces(s: &str) -> i32 {
    s.chars()
        .map(|c| match c {
            '{' => 1,
            '}' => -1,
            _ => 0,
        })
        .sum()
}

/// The first-level module of each item of a group's text (`adapters::cri, model::{a, b}}`).
fn spell_out(group: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut item = String::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => out.push(std::mem::take(&mut item)),
            _ if depth == 0 => item.push(c),
            _ => {}
        }
    }
    out.push(item);
    out.into_iter()
        .map(|i| i.trim().trim_end_matches("::").to_string())
        .filter(|i| !i.is_empty())
        .map(|i| format!("crate::{i}"))
        .collect()
}
