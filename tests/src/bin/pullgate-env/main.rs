//! Driver for `cargo xtask demo` and `cargo xtask bench`: starts the real environment, seeds it, runs
//! pullgate against it, and tears everything down (guards stop the processes even on error).
//!
//! One module per subcommand: `demo`, `image`, and `bench_prepull`, `bench_canary`, `bench_reconcile`,
//! `bench_idle`, `bench_api`, `bench_gate`; what two benchmarks share is in `bench`, what tests share too is in
//! the `pullgate_testenv` library.

mod bench;
mod bench_api;
mod bench_canary;
mod bench_gate;
mod bench_idle;
mod bench_prepull;
mod bench_reconcile;
mod demo;
mod image;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Seed a local registry and containerd, run `pullgate run --once --manifests DIR`.
    Demo {
        /// The demo manifests.
        #[arg(long, default_value = "examples/demo")]
        manifests: PathBuf,
    },
    /// The agent's OCI image archive (`cargo xtask image`); its path is the last line printed.
    Image {
        /// The stripped agent binary.
        #[arg(long, default_value_os_t = pullgate_testenv::agent_image::stripped_binary_path())]
        binary: PathBuf,
        /// The archive (default `target/image/pullgate-<version>.oci.tar`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also push it to `REGISTRY/REPO[:TAG]` (the tag defaults to the version).
        #[arg(long, value_name = "REGISTRY/REPO[:TAG]")]
        push: Option<String>,
        /// The registry user for --push; the password is read from PULLGATE_PUSH_PASSWORD.
        #[arg(long, requires = "push")]
        user: Option<String>,
        /// --push over plain HTTP (a registry on loopback).
        #[arg(long, requires = "push")]
        plain_http: bool,
    },
    /// Canary benchmark: Secret edit → canary report latency, and registry requests per depth.
    BenchCanary {
        /// Rotations to time.
        #[arg(long, default_value_t = 20)]
        rotations: usize,
    },
    /// Pre-pull benchmark: pullgate vs serial CRI pulls vs raw concurrent CRI pulls.
    BenchPrepull {
        #[arg(long, default_value_t = 8)]
        images: usize,
        /// Size of each image in MiB (two layers of half that each).
        #[arg(long, default_value_t = 20)]
        size_mib: usize,
        /// Runs per method; medians are reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Gate benchmark: a node that joins tainted with N critical images; agent start to the
    /// taint's removal (stored by the test API server) vs raw concurrent CRI pulls.
    BenchGate {
        #[arg(long, default_value_t = 8)]
        images: usize,
        /// Size of each image in MiB (two layers of half that each).
        #[arg(long, default_value_t = 20)]
        size_mib: usize,
        /// Runs per method; medians are reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// More `pullgate run` flags, after `--` (e.g. `-- --rotation-jitter 0s`).
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// Reconcile benchmark: `run --once` over N images that are all present; CRI calls per pass.
    BenchReconcile {
        #[arg(long, default_value_t = 2000)]
        images: usize,
        /// Timed passes per method; medians are reported.
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Idle benchmark: RSS and CPU of the daemon at steady state (everything present).
    BenchIdle {
        #[arg(long, default_value_t = 100)]
        pullsets: usize,
        #[arg(long, default_value_t = 500)]
        images: usize,
        #[arg(long, default_value_t = 200)]
        secrets: usize,
        /// Sampling window after the first pass.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Give every PullSet a canary on this cron schedule (e.g. `0 3 * * *`); none by default.
        #[arg(long)]
        canary_schedule: Option<String>,
    },
    /// API-server benchmark: requests per node per hour at steady state, in cluster mode.
    BenchApi {
        /// Window counted after the initial sync and first pass.
        #[arg(long, default_value_t = 12.0)]
        minutes: f64,
        #[arg(long, default_value_t = 10)]
        pullsets: usize,
        /// PullSets aimed at another node pool (`nodeSelector` this node does not match), each
        /// with its own Secret: they must not change the figures.
        #[arg(long, default_value_t = 10)]
        other_pool_pullsets: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Demo { manifests } => demo::demo(&manifests),
        Cmd::Image {
            binary,
            out,
            push,
            user,
            plain_http,
        } => image::image(
            &binary,
            out.as_deref(),
            push.map(|target| image::Push {
                target,
                user,
                password: std::env::var("PULLGATE_PUSH_PASSWORD").ok(),
                plain_http,
            }),
        ),
        Cmd::BenchPrepull {
            images,
            size_mib,
            runs,
        } => bench_prepull::bench_prepull(images, size_mib, runs),
        Cmd::BenchGate {
            images,
            size_mib,
            runs,
            agent_args,
        } => bench_gate::bench_gate(images, size_mib, runs, &agent_args),
        Cmd::BenchCanary { rotations } => bench_canary::bench_canary(rotations),
        Cmd::BenchReconcile { images, runs } => bench_reconcile::bench_reconcile(images, runs),
        Cmd::BenchIdle {
            pullsets,
            images,
            secrets,
            seconds,
            canary_schedule,
        } => bench_idle::bench_idle(
            pullsets,
            images,
            secrets,
            seconds,
            canary_schedule.as_deref(),
        ),
        Cmd::BenchApi {
            minutes,
            pullsets,
            other_pool_pullsets,
        } => bench_api::bench_api(minutes, pullsets, other_pool_pullsets),
    }
}
