//! Command-line interface: every flag in one place, each with `--long` and `PULLGATE_…` env.

use crate::adapters::cri::CriEndpoint;
use crate::model::node::NodeLabels;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// containerd's CRI socket, the default of every `--cri-endpoint`.
pub const DEFAULT_CRI_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// The agent's local API socket, the default of every `--api-socket`.
pub const DEFAULT_API_SOCKET: &str = "/run/pullgate/agent.sock";

/// The file name kubectl finds the plugin by (`kubectl pullgate …` runs `kubectl-pullgate …`).
pub const KUBECTL_PLUGIN: &str = "kubectl-pullgate";

#[derive(Debug, Parser)]
#[command(
    name = "pullgate",
    version,
    about = "Pre-pulls critical images and validates registry pull credentials on a Kubernetes node"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    /// Cluster flags placed before the command (`kubectl pullgate --context c diagnose …`): they
    /// apply to it as if placed after it; one placed after wins.
    #[command(flatten)]
    pub cluster: KubeArgs,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses the process's arguments; exits with clap's message on an error (as `parse`).
    pub fn parse_args() -> Self {
        Self::try_parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (`args[0]` the program): run as [`KUBECTL_PLUGIN`], usage and help say
    /// `kubectl pullgate`; cluster flags before the command are handed to it.
    pub fn try_parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let mut command = Self::command();
        if args.first().and_then(|a| Path::new(a).file_name()) == Some(KUBECTL_PLUGIN.as_ref()) {
            command = command.bin_name("kubectl pullgate");
        }
        let matches = command.try_get_matches_from_mut(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        let leading = std::mem::take(&mut cli.cluster);
        if leading != KubeArgs::default() {
            let Some(flags) = cli.command.cluster_flags_mut() else {
                return Err(command.error(
                    clap::error::ErrorKind::ArgumentConflict,
                    "--kubeconfig, --context, --cluster, --user and --namespace are flags of \
                     diagnose, audit, auth resolve, check and status only",
                ));
            };
            flags.inherit(leading);
            if let Some(conflict) = cli.command.conflict() {
                return Err(command.error(clap::error::ErrorKind::ArgumentConflict, conflict));
            }
        }
        Ok(cli)
    }
}

impl Command {
    /// The command's cluster flags, when it talks to a cluster.
    pub fn cluster_flags_mut(&mut self) -> Option<&mut KubeArgs> {
        match self {
            Self::Diagnose(d) => Some(&mut d.cluster),
            Self::Audit(a) => Some(&mut a.cluster),
            Self::Check(c) => Some(&mut c.selection.cluster),
            Self::Auth(AuthArgs {
                command: AuthCommand::Resolve(r),
            }) => Some(&mut r.selection.cluster),
            Self::Status(s) => Some(&mut s.cluster),
            Self::Run(_) | Self::Crd | Self::Canary(_) => None,
        }
    }

    /// What clap would have refused had the leading cluster flags been placed after the command.
    fn conflict(&self) -> Option<&'static str> {
        let connects = |k: &KubeArgs| k.connects();
        match self {
            Self::Diagnose(d) if d.manifests.is_some() && connects(&d.cluster) => Some(
                "--manifests reads no cluster: it takes no --kubeconfig, --context, --cluster or --user",
            ),
            Self::Check(CheckArgs { selection, .. })
            | Self::Auth(AuthArgs {
                command: AuthCommand::Resolve(ResolveArgs { selection, .. }),
            }) if selection.is_offline() && connects(&selection.cluster) => Some(
                "--docker-config and --manifests read no cluster: they take no --kubeconfig, --context, --cluster or --user",
            ),
            Self::Status(s) if s.api_socket.is_some() && connects(&s.cluster) => Some(
                "--api-socket reads this node's agent: it takes no --kubeconfig, --context, --cluster or --user",
            ),
            _ => None,
        }
    }
}

/// Which API server, as whom, in which namespace: kubectl's flags, read as kubectl reads them
/// (`--kubeconfig`, else `$KUBECONFIG` merged, else `~/.kube/config`, else in-cluster; see
/// `adapters::kube::kubeconfig`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Args)]
#[command(group(clap::ArgGroup::new("connection").multiple(true).args(["kubeconfig", "context", "cluster", "user"])))]
pub struct KubeArgs {
    /// The kubeconfig file (default: $KUBECONFIG, a `:`-separated list merged as kubectl does,
    /// else ~/.kube/config, else the in-cluster configuration).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current-context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// The kubeconfig cluster, instead of the context's.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// The kubeconfig user, instead of the context's.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// The namespace (default: the context's, else `default`; with --manifests: `default`).
    /// Cluster-wide commands (`audit`, `status`) ignore it, as kubectl does for nodes.
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
}

impl KubeArgs {
    /// Takes each flag of `outer` (placed before the command) that this one does not set.
    fn inherit(&mut self, outer: Self) {
        let Self {
            kubeconfig,
            context,
            cluster,
            user,
            namespace,
        } = outer;
        self.kubeconfig = self.kubeconfig.take().or(kubeconfig);
        self.context = self.context.take().or(context);
        self.cluster = self.cluster.take().or(cluster);
        self.user = self.user.take().or(user);
        self.namespace = self.namespace.take().or(namespace);
    }

    /// Whether a flag picks the API server (all but `--namespace`).
    pub fn connects(&self) -> bool {
        self.kubeconfig.is_some()
            || self.context.is_some()
            || self.cluster.is_some()
            || self.user.is_some()
    }

    /// The namespace where no kubeconfig is read (`--manifests`): `-n`, else `default`.
    pub fn namespace_or_default(&self) -> String {
        self.namespace.clone().unwrap_or_else(|| "default".into())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: keep the selected PullSets' images present and report outcomes.
    #[command(args_override_self = true)]
    Run(Box<RunArgs>),
    /// Credential tools for people on call and scripts.
    Auth(AuthArgs),
    /// Check images now with a registry-direct canary (exit 0 only when every image is Ok).
    Check(CheckArgs),
    /// Print the PullSet CustomResourceDefinition (YAML), generated from the Rust type.
    Crd,
    /// What the agent on this node knows now (through its local API).
    Status(StatusArgs),
    /// Run canaries now on this node's agent and print each result (one PullSet, or all).
    Canary(CanaryArgs),
    /// Walk the whole pull ladder for IMAGE as a pod in NAMESPACE would, step by step.
    Diagnose(DiagnoseArgs),
    /// Cluster-wide blast-radius report of pull secrets (for an admin; not run by the DaemonSet).
    Audit(AuditArgs),
}

/// Where `status` reads: `--node`, `--all-nodes` or a cluster flag: the Nodes' conditions from the
/// API server; else `--api-socket` (flag or env): this node's agent; else the default socket when
/// it exists, and the API server's Nodes when it does not (off a node, e.g. `kubectl pullgate`).
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The local gRPC API's Unix socket of the agent on this node (default: /run/pullgate/agent.sock).
    #[arg(
        long = "api-socket",
        env = "PULLGATE_API_SOCKET",
        value_name = "PATH",
        conflicts_with_all = ["nodes", "all_nodes", "connection"]
    )]
    pub api_socket: Option<ApiSocket>,
    /// From the API server: this Node's pullgate conditions (repeat for more).
    #[arg(long = "node", value_name = "NAME")]
    pub nodes: Vec<String>,
    /// From the API server: every Node's pullgate conditions.
    #[arg(long, conflicts_with = "nodes")]
    pub all_nodes: bool,
    #[command(flatten)]
    pub cluster: KubeArgs,
    /// Print the answer as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CanaryArgs {
    /// `NAMESPACE/NAME` of one PullSet (default: every canaried PullSet on this node).
    pub pullset: Option<String>,
    #[command(flatten)]
    pub api: ApiSocketArg,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Objects from `--manifests DIR`, else from the API server the cluster flags pick (as kubectl).
#[derive(Debug, Args)]
pub struct DiagnoseArgs {
    /// The image, as the pod names it.
    pub image: String,
    /// The API server and the pod's namespace (`-n`, else the context's, else `default`).
    #[command(flatten)]
    pub cluster: KubeArgs,
    /// As a pod with this ServiceAccount and no imagePullSecrets of its own (default `default`).
    #[arg(long, conflicts_with = "pod")]
    pub service_account: Option<String>,
    /// As this pod (its imagePullSecrets, else its ServiceAccount's); cluster mode only.
    #[arg(long, conflicts_with = "manifests")]
    pub pod: Option<String>,
    /// Objects from the YAML files in DIR (default: from the API server).
    #[arg(long, value_name = "DIR", conflicts_with = "connection")]
    pub manifests: Option<PathBuf>,
    #[command(flatten)]
    pub node_credentials: NodeCredentialArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The runtime's CRI socket: its answer and the node cache state (skipped with `off`).
    #[arg(
        long,
        env = "PULLGATE_CRI_ENDPOINT",
        default_value = DEFAULT_CRI_ENDPOINT
    )]
    pub cri_endpoint: String,
    /// Print the steps as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// The API server (cluster-wide: `-n` is ignored).
    #[command(flatten)]
    pub cluster: KubeArgs,
    /// Flag credentials that expire within this window.
    #[arg(long, default_value = "168h")]
    pub expiry_warning: humantime::Duration,
    /// Flag Secrets whose data was not changed for this long (creation time when unknown).
    #[arg(long, default_value = "2160h")]
    pub max_age: humantime::Duration,
    #[command(flatten)]
    pub fingerprint: FingerprintArgs,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    pub command: AuthCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Which credentials the kubelet would try for IMAGE, in its order (never a password).
    Resolve(ResolveArgs),
}

#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// The image, as a pod would name it.
    pub image: String,
    #[command(flatten)]
    pub selection: CredentialSelection,
    #[command(flatten)]
    pub node_credentials: NodeCredentialArgs,
    #[command(flatten)]
    pub fingerprint: FingerprintArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The key of the credential fingerprints `audit` and `auth resolve` print.
#[derive(Debug, Args)]
pub struct FingerprintArgs {
    /// Key the credential fingerprints (HMAC-SHA256) with these UTF-8 bytes, so that outputs made
    /// with the same key can be compared; without it, a key is drawn for this run and the
    /// fingerprints compare within this output only.
    #[arg(
        long,
        env = "PULLGATE_FINGERPRINT_KEY",
        hide_env_values = true,
        value_name = "KEY",
        value_parser = parse_fingerprint_key
    )]
    pub fingerprint_key: Option<secrecy::SecretString>,
}

/// `--fingerprint-key`: any non-empty text (never echoed in an error).
fn parse_fingerprint_key(s: &str) -> Result<secrecy::SecretString, String> {
    if s.is_empty() {
        Err("the fingerprint key is empty".into())
    } else {
        Ok(secrecy::SecretString::from(s))
    }
}

/// Whose credentials: Docker config files, a pod's / PullSet's in a manifest directory, or else
/// a pod's in the cluster the cluster flags pick (as kubectl).
#[derive(Debug, Args)]
pub struct CredentialSelection {
    /// Docker config files (`config.json` or legacy `.dockercfg`), tried as one keyring.
    #[arg(long = "docker-config", value_name = "FILE", conflicts_with_all = ["connection", "namespace", "service_account", "pod"])]
    pub docker_configs: Vec<PathBuf>,
    /// Resolve as the agent would, from the objects in DIR (default without --docker-config:
    /// from the API server).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["docker_configs", "connection"]
    )]
    pub manifests: Option<PathBuf>,
    /// The API server and the namespace of the pod / PullSet (`-n`, else the context's, else
    /// `default`; with --manifests: `default`).
    #[command(flatten)]
    pub cluster: KubeArgs,
    /// Resolve as a pod with this ServiceAccount and no imagePullSecrets of its own (default:
    /// `default`).
    #[arg(long, conflicts_with_all = ["pullset", "pod"])]
    pub service_account: Option<String>,
    /// Resolve with this PullSet's imagePullSecrets / ServiceAccount (from --manifests).
    #[arg(long, requires = "manifests")]
    pub pullset: Option<String>,
    /// Resolve as this pod (its imagePullSecrets, else its ServiceAccount's), read from the API
    /// server.
    #[arg(long, conflicts_with = "manifests")]
    pub pod: Option<String>,
}

impl CredentialSelection {
    /// Whether the credentials come from files (`--docker-config`, `--manifests`), not a cluster.
    pub fn is_offline(&self) -> bool {
        !self.docker_configs.is_empty() || self.manifests.is_some()
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The images to check now.
    #[arg(required = true)]
    pub images: Vec<String>,
    #[command(flatten)]
    pub selection: CredentialSelection,
    #[command(flatten)]
    pub node_credentials: NodeCredentialArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// How far the registry-direct canary goes.
    #[arg(long, value_enum, default_value_t = DepthArg::Manifest)]
    pub depth: DepthArg,
    /// Also pull through the container runtime (CRI `PullImage`), the node's real path.
    #[arg(long)]
    pub runtime: bool,
    /// The runtime's CRI socket, for `--runtime`.
    #[arg(
        long,
        env = "PULLGATE_CRI_ENDPOINT",
        default_value = DEFAULT_CRI_ENDPOINT
    )]
    pub cri_endpoint: CriEndpoint,
    /// Print JSON lines instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DepthArg {
    Manifest,
    Blobs,
    Full,
}

impl From<DepthArg> for crate::model::pullset::CanaryDepth {
    fn from(d: DepthArg) -> Self {
        match d {
            DepthArg::Manifest => Self::Manifest,
            DepthArg::Blobs => Self::Blobs,
            DepthArg::Full => Self::Full,
        }
    }
}

/// How canaries reach registries.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// A registry (`host[:port]`) reached over plain HTTP, whatever the runtime's `hosts.toml`
    /// says (an explicit override; a `server = "http://…"` there needs no flag).
    #[arg(
        long = "insecure-registry",
        env = "PULLGATE_INSECURE_REGISTRIES",
        value_delimiter = ',',
        value_name = "HOST"
    )]
    pub insecure_registries: Vec<String>,
    /// The platform whose manifest is checked in an index (default: this host's).
    #[arg(long, env = "PULLGATE_PLATFORM")]
    pub platform: Option<crate::adapters::registry::Platform>,
    /// Warn when a credential expires within this window.
    #[arg(long, env = "PULLGATE_EXPIRY_WARNING", default_value = "2h")]
    pub expiry_warning: humantime::Duration,
    /// The runtime's registry configuration directory (containerd's `config_path` with
    /// `<registry>/hosts.toml`): registry-direct canaries reach each registry as its hosts.toml
    /// says (`server`, `ca`, `client`, `skip_verify`, `override_path`, `header`), and runtime
    /// canaries say when a mirror sits in the path. Default, when the runtime is at hand (`run`,
    /// `check --runtime`, `diagnose`): the `config_path` the runtime reports in its verbose CRI
    /// Status (containerd 1.6 and 1.7), else the one in `--runtime-config-file` (2.x), else
    /// containerd's defaults per registry.
    #[arg(long, env = "PULLGATE_RUNTIME_REGISTRY_CONFIG", value_name = "DIR")]
    pub runtime_registry_config: Option<PathBuf>,
    /// containerd's configuration file (its `--config`), read with its `imports` for the CRI
    /// images plugin's registry `config_path` when the runtime does not report it (containerd
    /// 2.x) and `--runtime-registry-config` is absent. Absent or unreadable: containerd's
    /// defaults, with a warning.
    #[arg(
        long,
        env = "PULLGATE_RUNTIME_CONFIG_FILE",
        value_name = "FILE",
        default_value = "/etc/containerd/config.toml"
    )]
    pub runtime_config_file: PathBuf,
    /// Longest time for one manifest or blob `HEAD` request (a trickling registry fails after it).
    /// A `full` canary's blob download gets this plus the blob's size at 256 KiB/s.
    #[arg(long, env = "PULLGATE_REGISTRY_TIMEOUT", default_value = "60s")]
    pub registry_timeout: humantime::Duration,
    /// Longest time for one registry-direct canary probe (one credential), from the `/v2/` ping
    /// and the token service to the last blob: a registry or token realm that never answers ends
    /// the canary here with a `Network` verdict naming the registry. A `full` canary of large
    /// images on a slow link needs this above its byte budget's download time.
    #[arg(long, env = "PULLGATE_CANARY_TIMEOUT", default_value = "10m")]
    pub canary_timeout: humantime::Duration,
    /// The most bytes one `full` canary probe downloads (manifests included; `512MiB`, `1GiB`…).
    /// A blob larger than what is left is checked by `HEAD` only, with a `NotDownloaded` warning.
    #[arg(
        long,
        env = "PULLGATE_MAX_CANARY_BYTES",
        default_value = "1GiB",
        value_name = "BYTES"
    )]
    pub max_canary_bytes: crate::adapters::registry::ByteCount,
    /// PEM certificates the registry-direct canary trusts besides the built-in (Mozilla) roots:
    /// a registry with a private CA.
    #[arg(long, env = "PULLGATE_REGISTRY_CA_FILE", value_name = "FILE")]
    pub registry_ca_file: Option<PathBuf>,
}

/// The node's own credentials, configured with the kubelet's flags.
#[derive(Debug, Args)]
pub struct NodeCredentialArgs {
    /// A Docker config file on the node (the kubelet reads `config.json` from its root dir).
    #[arg(long, env = "PULLGATE_NODE_DOCKER_CONFIG", value_name = "FILE")]
    pub node_docker_config: Option<PathBuf>,
    /// The kubelet's CredentialProviderConfig (a file or a directory of them).
    #[arg(
        long,
        env = "PULLGATE_IMAGE_CREDENTIAL_PROVIDER_CONFIG",
        value_name = "PATH",
        requires = "image_credential_provider_bin_dir"
    )]
    pub image_credential_provider_config: Option<PathBuf>,
    /// Where the credential-provider plugin binaries are.
    #[arg(
        long,
        env = "PULLGATE_IMAGE_CREDENTIAL_PROVIDER_BIN_DIR",
        value_name = "DIR"
    )]
    pub image_credential_provider_bin_dir: Option<PathBuf>,
    /// How long one plugin run may take (the kubelet allows one minute).
    #[arg(
        long,
        env = "PULLGATE_CREDENTIAL_PROVIDER_TIMEOUT",
        default_value = "1m"
    )]
    pub credential_provider_timeout: humantime::Duration,
}

/// Logging (always on stderr; stdout carries the reports).
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "PULLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Standalone mode: read PullSet, Secret and ServiceAccount objects from the YAML files in DIR
    /// (watched) and report as JSON lines on stdout.
    #[arg(long, env = "PULLGATE_MANIFESTS", value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Cluster mode (no --manifests): the kubeconfig to use (default: in-cluster, then KUBECONFIG).
    #[arg(
        long,
        env = "PULLGATE_KUBECONFIG",
        value_name = "FILE",
        conflicts_with = "manifests"
    )]
    pub kubeconfig: Option<PathBuf>,
    /// One full pass, then exit 0 if every outcome is Ok and every object valid, 1 otherwise (2: a
    /// fatal error such as a missing directory).
    #[arg(long, env = "PULLGATE_ONCE")]
    pub once: bool,
    #[command(flatten)]
    pub node: NodeArgs,
    #[command(flatten)]
    pub kubelet: KubeletArgs,
    #[command(flatten)]
    pub cri: CriArgs,
    #[command(flatten)]
    pub prepull: PrePullArgs,
    #[command(flatten)]
    pub credentials: NodeCredentialArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Rotation and start-up canaries wait a deterministic offset below this (0: at once). The
    /// start-up canaries of the PullSets a node still carrying the readiness taint waits for
    /// run at once.
    #[arg(long, env = "PULLGATE_ROTATION_JITTER", default_value = "2s")]
    pub rotation_jitter: humantime::Duration,
    /// A PullSet's canaries start at most once per this, whatever asks (cron, rotation, retry,
    /// start-up) but a manual `pullgate canary`; a cron schedule firing more often is refused.
    /// The first request after a quiet interval runs at once; later ones wait and coalesce.
    #[arg(
        long,
        env = "PULLGATE_MIN_CANARY_INTERVAL",
        default_value = "5m",
        overrides_with = "min_canary_interval"
    )]
    pub min_canary_interval: humantime::Duration,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Serve `GET /healthz` and `GET /readyz` (the DaemonSet's probes) on this address; port 0
    /// picks a free one (logged); `off` serves nothing.
    #[arg(
        long,
        env = "PULLGATE_METRICS_ADDR",
        value_name = "ADDR",
        default_value = "0.0.0.0:9464"
    )]
    pub metrics_addr: ListenAddr,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub api: ApiSocketArg,
    /// `GET /healthz` fails (503, naming the task) when the pre-pull loop, the canary scheduler or
    /// the node reporter has ended or gone longer than its own bound without progress. Each bound
    /// derives from that loop's flags (pre-pull: --pull-timeout + --cri-reconnect-budget +
    /// --retry-max-delay; canary: the longer of --registry-timeout and --pull-timeout, +
    /// --cri-reconnect-budget; node reporter: --condition-heartbeat); this grace is added to each.
    #[arg(long, env = "PULLGATE_WATCHDOG_GRACE", default_value = "5m")]
    pub watchdog_grace: humantime::Duration,
}

/// Who may read `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsAuthMode {
    /// A bearer token the API server authenticates (TokenReview) and authorizes for `get` on
    /// `/metrics` (SubjectAccessReview).
    Kubernetes,
    /// Anyone who reaches the address.
    None,
}

/// The HTTP endpoints' access and bounds.
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Who may read `/metrics`: `kubernetes` (the default in cluster mode) or `none` (the default
    /// with --manifests, which has no API server to ask). `/healthz` and `/readyz` stay open.
    #[arg(long, env = "PULLGATE_METRICS_AUTH", value_enum)]
    pub metrics_auth: Option<MetricsAuthMode>,
    /// A connection that has not sent a request's headers within this is closed.
    #[arg(long, env = "PULLGATE_HTTP_HEADER_TIMEOUT", default_value = "10s")]
    pub http_header_timeout: humantime::Duration,
    /// HTTP connections served at once; one more is closed unserved.
    #[arg(long, env = "PULLGATE_HTTP_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub http_max_connections: u16,
    /// With `--metrics-auth kubernetes`: token reviews (a token not in the cache) that may start
    /// at once…
    #[arg(long, env = "PULLGATE_METRICS_REVIEW_BURST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub metrics_review_burst: u32,
    /// …then one more per this; past it a `/metrics` request is answered 429 with `Retry-After`,
    /// without a review. Must be more than 0.
    #[arg(long, env = "PULLGATE_METRICS_REVIEW_REFILL", default_value = "200ms", value_parser = parse_positive_duration)]
    pub metrics_review_refill: humantime::Duration,
}

/// A duration longer than zero.
fn parse_positive_duration(s: &str) -> Result<humantime::Duration, String> {
    let d: humantime::Duration = s.parse().map_err(|e| format!("{e}"))?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

/// The agent's local API socket.
#[derive(Debug, Args)]
pub struct ApiSocketArg {
    /// The local gRPC API's Unix socket (mode 0600), for `pullgate status` and `pullgate canary`;
    /// `off` serves nothing.
    #[arg(
        long = "api-socket",
        env = "PULLGATE_API_SOCKET",
        value_name = "PATH",
        default_value = DEFAULT_API_SOCKET
    )]
    pub path: ApiSocket,
}

/// A socket path, or `off`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSocket(pub Option<PathBuf>);

impl std::str::FromStr for ApiSocket {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(
            (!s.eq_ignore_ascii_case("off")).then(|| PathBuf::from(s)),
        ))
    }
}

/// An address to listen on, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr(pub Option<std::net::SocketAddr>);

impl std::str::FromStr for ListenAddr {
    type Err = std::net::AddrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            Ok(Self(None))
        } else {
            s.parse().map(|a| Self(Some(a)))
        }
    }
}

/// What cluster mode writes about this node: conditions, Events, the readiness taint.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// The start-up taint (effect `NoSchedule`) this agent removes once its gated PullSets are
    /// ready; follow your autoscaler's convention (see the README).
    #[arg(
        long,
        env = "PULLGATE_TAINT_KEY",
        default_value = "pullgate.io/not-ready"
    )]
    pub taint_key: String,
    /// After this long (since the agent started) the taint is removed anyway, with a
    /// `GateTimedOut` Event.
    #[arg(long, env = "PULLGATE_GATE_TIMEOUT", default_value = "10m")]
    pub gate_timeout: humantime::Duration,
    /// At the gate timeout: `remove` the taint anyway, or `keep` it until the gate opens.
    #[arg(long, env = "PULLGATE_GATE_TIMEOUT_ACTION", value_enum, default_value_t = GateTimeoutAction::Remove)]
    pub gate_timeout_action: GateTimeoutAction,
    /// The namespaces whose `gate: true` PullSets hold the taint, by exact name, comma-separated
    /// (empty: none). A `gate: true` PullSet elsewhere is pre-pulled and canaried but does not
    /// hold the taint; it gets a `GateNotAllowed` Event. Whoever may create PullSets in a listed
    /// namespace can keep new nodes tainted until the gate timeout.
    #[arg(
        long,
        env = "PULLGATE_GATE_NAMESPACES",
        value_name = "NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub gate_namespaces: Vec<String>,
    /// The namespaces whose `pin: true` PullSets pin their images (never removed by the
    /// kubelet's image GC), by exact name, comma-separated (empty: none). Elsewhere `pin: true`
    /// is a `PinNotAllowed` warning on the outcomes. Standalone, every namespace pins.
    #[arg(
        long,
        env = "PULLGATE_PIN_NAMESPACES",
        value_name = "NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub pin_namespaces: Vec<String>,
    /// Re-write the node conditions (a fresh `lastHeartbeatTime`) at least this often.
    #[arg(long, env = "PULLGATE_CONDITION_HEARTBEAT", default_value = "10m")]
    pub condition_heartbeat: humantime::Duration,
    /// Events this node may send at once to the API server…
    #[arg(long, env = "PULLGATE_EVENT_BURST", default_value_t = 25)]
    pub event_burst: u32,
    /// …then one more per this interval; the rest are counted, not sent.
    #[arg(long, env = "PULLGATE_EVENT_REFILL", default_value = "10s")]
    pub event_refill: humantime::Duration,
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// This node's name (from the downward API in a DaemonSet).
    #[arg(long, env = "PULLGATE_NODE_NAME")]
    pub node_name: Option<String>,
    /// This node's labels, for PullSet nodeSelectors in standalone mode: `k=v,k2=v2`.
    #[arg(long, env = "PULLGATE_NODE_LABELS", default_value = "")]
    pub node_labels: NodeLabels,
}

/// The kubelet's verification of pre-pulled images (KEP-2535): who may start what pullgate pulled.
#[derive(Debug, Args)]
pub struct KubeletArgs {
    /// The kubelet's configuration file (KubeletConfiguration, YAML or JSON; kubeadm's
    /// /var/lib/kubelet/config.yaml): its imagePullCredentialsVerificationPolicy,
    /// preloadedImagesVerificationAllowlist and featureGates decide each pre-pull's
    /// `kubelet_access`. Unset: `Unknown`; unreadable: a warning naming file and field, `Unknown`.
    #[arg(long, env = "PULLGATE_KUBELET_CONFIG", value_name = "FILE")]
    pub kubelet_config: Option<PathBuf>,
    /// The kubelet's version (`v1.35.2`), for the feature gate's default when the file does not
    /// set it (standalone mode; cluster mode reads the Node's status.nodeInfo.kubeletVersion).
    #[arg(long, env = "PULLGATE_KUBELET_VERSION", value_name = "VERSION", value_parser = kubelet_version)]
    pub kubelet_version: Option<crate::decide::kubelet_access::KubeletVersion>,
}

fn kubelet_version(s: &str) -> Result<crate::decide::kubelet_access::KubeletVersion, String> {
    crate::decide::kubelet_access::KubeletVersion::parse(s)
        .ok_or_else(|| format!("`{s}` is not a kubelet version such as v1.35.2"))
}

#[derive(Debug, Args)]
pub struct CriArgs {
    /// The container runtime's CRI socket.
    #[arg(
        long,
        env = "PULLGATE_CRI_ENDPOINT",
        default_value = DEFAULT_CRI_ENDPOINT
    )]
    pub cri_endpoint: CriEndpoint,
    /// Deadline of every CRI call but PullImage.
    #[arg(long, env = "PULLGATE_CRI_TIMEOUT", default_value = "10s")]
    pub cri_timeout: humantime::Duration,
    /// Deadline of one PullImage call.
    #[arg(long, env = "PULLGATE_PULL_TIMEOUT", default_value = "15m")]
    pub pull_timeout: humantime::Duration,
    /// How long one call keeps reconnecting to an unreachable runtime before it fails.
    #[arg(long, env = "PULLGATE_CRI_RECONNECT_BUDGET", default_value = "30s")]
    pub cri_reconnect_budget: humantime::Duration,
}

#[derive(Debug, Args)]
pub struct PrePullArgs {
    /// Pulls in flight at once.
    #[arg(long, env = "PULLGATE_MAX_PARALLEL_PULLS", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_parallel_pulls: u16,
    /// Free space kept on the runtime's image filesystem: no download starts at or below it. A
    /// share of its capacity (`20%`, the default: five points below the kubelet's 85 % image-GC
    /// threshold) or a size (`20GiB`); `0` turns the check off.
    #[arg(long, env = "PULLGATE_MIN_FREE_DISK", default_value = "20%")]
    pub min_free_disk: crate::decide::prepull::MinFreeDisk,
    /// Where the host's paths are found (in a container: the directory the host's directories are
    /// mounted under): the image filesystem the runtime names is read at this + its mountpoint.
    /// Unset: the mountpoint as the runtime reports it.
    #[arg(long, env = "PULLGATE_HOST_ROOT")]
    pub host_root: Option<crate::adapters::statvfs::HostRoot>,
    /// How often to re-check that every image is still present (the kubelet's image GC may remove one).
    #[arg(long, env = "PULLGATE_RECHECK_INTERVAL", default_value = "5m")]
    pub recheck_interval: humantime::Duration,
    /// Attempts per credential for transient failures (network, rate limit, runtime unavailable).
    #[arg(long, env = "PULLGATE_PULL_ATTEMPTS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub pull_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter.
    #[arg(long, env = "PULLGATE_RETRY_MIN_DELAY", default_value = "1s")]
    pub retry_min_delay: humantime::Duration,
    /// Retry delay cap.
    #[arg(long, env = "PULLGATE_RETRY_MAX_DELAY", default_value = "30s")]
    pub retry_max_delay: humantime::Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn metrics_review_limits_default_to_client_gos_rate_and_refuse_zero() {
        let parse = |extra: &[&str]| {
            let args = ["pullgate", "run", "--node-name", "n1"];
            Cli::try_parse_from(args.iter().chain(extra)).map(|cli| match cli.command {
                Command::Run(run) => (
                    run.http.metrics_review_burst,
                    *run.http.metrics_review_refill,
                ),
                _ => panic!("run expected"),
            })
        };
        let ms = std::time::Duration::from_millis;
        assert_eq!(parse(&[]).unwrap(), (10, ms(200)));
        assert_eq!(
            parse(&[
                "--metrics-review-burst",
                "3",
                "--metrics-review-refill",
                "1h"
            ])
            .unwrap(),
            (3, ms(3_600_000))
        );
        for bad in [
            &["--metrics-review-refill", "0s"][..],
            &["--metrics-review-burst", "0"],
            &["--metrics-review-refill", "soon"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults() {
        let cli =
            Cli::try_parse_from(["pullgate", "run", "--manifests", "/m", "--node-name", "n1"])
                .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("run expected");
        };
        assert_eq!(
            run.cri.cri_endpoint.to_string(),
            "unix:///run/containerd/containerd.sock"
        );
        assert_eq!(run.prepull.max_parallel_pulls, 3);
        assert_eq!(
            run.prepull.min_free_disk,
            crate::decide::prepull::MinFreeDisk::Percent(20)
        );
        assert!(Cli::try_parse_from(["pullgate", "run", "--min-free-disk", "120%"]).is_err());
        assert_eq!(run.prepull.host_root, None);
        assert!(Cli::try_parse_from(["pullgate", "run", "--host-root", "host"]).is_err());
        assert_eq!(
            *run.prepull.recheck_interval,
            std::time::Duration::from_secs(300)
        );
        assert!(!run.once);
        assert!(Cli::try_parse_from(["pullgate", "run", "--max-parallel-pulls", "0"]).is_err());
        assert!(Cli::try_parse_from(["pullgate", "run", "--cri-endpoint", "tcp://x"]).is_err());
        // auth resolve reads the cluster without --docker-config or --manifests, and
        // --manifests needs no namespace (`default`).
        assert!(Cli::try_parse_from(["pullgate", "auth", "resolve", "nginx"]).is_ok());
        assert!(
            Cli::try_parse_from(["pullgate", "auth", "resolve", "nginx", "--manifests", "/m"])
                .is_ok()
        );
        assert!(
            Cli::try_parse_from([
                "pullgate",
                "auth",
                "resolve",
                "nginx",
                "--docker-config",
                "a",
                "--docker-config",
                "b"
            ])
            .is_ok()
        );
        assert!(
            Cli::try_parse_from([
                "pullgate",
                "auth",
                "resolve",
                "nginx",
                "--manifests",
                "/m",
                "-n",
                "x",
                "--service-account",
                "s",
                "--pullset",
                "p"
            ])
            .is_err()
        );
    }

    #[test]
    fn diagnose_reads_a_directory_or_else_the_cluster() {
        let parse = |extra: &[&str]| {
            let args = ["pullgate", "diagnose", "nginx", "-n", "team"];
            Cli::try_parse_from(args.iter().chain(extra)).map(|cli| match cli.command {
                Command::Diagnose(d) => (d.manifests.is_some(), d.cluster.kubeconfig.is_some()),
                _ => panic!("diagnose expected"),
            })
        };
        assert_eq!(parse(&[]).unwrap(), (false, false));
        assert_eq!(parse(&["--manifests", "/m"]).unwrap(), (true, false));
        assert_eq!(
            parse(&["--kubeconfig", "/k", "--pod", "p"]).unwrap(),
            (false, true)
        );
        assert!(parse(&["--manifests", "/m", "--kubeconfig", "/k"]).is_err());
        assert!(parse(&["--manifests", "/m", "--pod", "p"]).is_err());
        assert!(parse(&["--in-cluster"]).is_err());
        assert!(parse(&["--manifests", "/m", "--context", "c"]).is_err());
    }

    fn cluster_of(args: &[&str]) -> Result<KubeArgs, String> {
        let mut cli = Cli::try_parse_args(args).map_err(|e| e.to_string())?;
        cli.command
            .cluster_flags_mut()
            .map(|k| k.clone())
            .ok_or_else(|| "no cluster flags".to_string())
    }

    #[test]
    fn cluster_flags_go_before_or_after_the_command_the_later_wins() {
        let flags =
            |kubeconfig: Option<&str>, context: Option<&str>, namespace: Option<&str>| KubeArgs {
                kubeconfig: kubeconfig.map(PathBuf::from),
                context: context.map(str::to_string),
                namespace: namespace.map(str::to_string),
                ..KubeArgs::default()
            };
        let ok = |args: &[&str]| cluster_of(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        // As kubectl hands them over: `kubectl pullgate --context c diagnose …`.
        assert_eq!(
            ok(&[
                "kubectl-pullgate",
                "--context",
                "c",
                "-n",
                "a",
                "diagnose",
                "img"
            ]),
            flags(None, Some("c"), Some("a"))
        );
        assert_eq!(
            ok(&[
                "pullgate",
                "diagnose",
                "img",
                "--context=c",
                "--namespace",
                "a"
            ]),
            flags(None, Some("c"), Some("a"))
        );
        // Both places: each flag from where it is set, the one after the command winning.
        assert_eq!(
            ok(&[
                "pullgate",
                "-n",
                "a",
                "--kubeconfig",
                "/k",
                "diagnose",
                "img",
                "-n",
                "b"
            ]),
            flags(Some("/k"), None, Some("b"))
        );
        // Unset: nothing (the kubeconfig rule decides later).
        assert_eq!(ok(&["pullgate", "diagnose", "img"]), KubeArgs::default());
        for args in [
            &["pullgate", "--context", "c", "audit"][..],
            &[
                "pullgate",
                "--context",
                "c",
                "auth",
                "resolve",
                "img",
                "--pod",
                "p",
            ],
            &["pullgate", "--context", "c", "check", "img"],
            &["pullgate", "--context", "c", "status"],
        ] {
            assert_eq!(ok(args).context.as_deref(), Some("c"), "{args:?}");
        }
        // A command that reads no cluster refuses them, wherever they are.
        for args in [
            &["pullgate", "--context", "c", "run", "--manifests", "/m"][..],
            &["pullgate", "-n", "x", "crd"],
            &["pullgate", "--kubeconfig", "/k", "canary"],
            &["pullgate", "crd", "--context", "c"],
        ] {
            let err = Cli::try_parse_args(args).err().map(|e| e.to_string());
            assert!(err.is_some(), "{args:?}");
        }
        // A leading flag is refused where clap refuses it after the command.
        for args in [
            &[
                "pullgate",
                "--context",
                "c",
                "diagnose",
                "img",
                "--manifests",
                "/m",
            ][..],
            &[
                "pullgate",
                "--user",
                "u",
                "check",
                "img",
                "--docker-config",
                "/d",
            ],
            &[
                "pullgate",
                "--kubeconfig",
                "/k",
                "status",
                "--api-socket",
                "/s",
            ],
            &[
                "pullgate",
                "diagnose",
                "img",
                "--manifests",
                "/m",
                "--context",
                "c",
            ],
            &[
                "pullgate",
                "check",
                "img",
                "--docker-config",
                "/d",
                "-n",
                "x",
            ],
            &[
                "pullgate",
                "auth",
                "resolve",
                "img",
                "--pod",
                "p",
                "--manifests",
                "/m",
            ],
            &["pullgate", "status", "--api-socket", "/s", "--node", "n"],
            &["pullgate", "status", "--node", "n", "--all-nodes"],
        ] {
            assert!(Cli::try_parse_args(args).is_err(), "{args:?}");
        }
        // -n alone with --manifests or for status is fine.
        assert!(
            Cli::try_parse_args(["pullgate", "-n", "x", "diagnose", "i", "--manifests", "/m"])
                .is_ok()
        );
        assert!(
            Cli::try_parse_args(["pullgate", "-n", "x", "status", "--api-socket", "/s"]).is_ok()
        );
    }

    #[test]
    fn as_a_kubectl_plugin_usage_says_kubectl_pullgate() {
        let help = |args: &[&str]| match Cli::try_parse_args(args) {
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => e.to_string(),
            other => panic!("{args:?}: help expected, got {other:?}"),
        };
        let top = help(&["/home/me/.local/bin/kubectl-pullgate", "--help"]);
        assert!(
            top.contains("Usage: kubectl pullgate [OPTIONS] <COMMAND>"),
            "{top}"
        );
        let sub = help(&["kubectl-pullgate", "diagnose", "--help"]);
        assert!(sub.contains("Usage: kubectl pullgate diagnose"), "{sub}");
        assert!(sub.contains("--context <NAME>"), "{sub}");
        let plain = help(&["/usr/bin/pullgate", "auth", "resolve", "--help"]);
        assert!(plain.contains("Usage: pullgate auth resolve"), "{plain}");
        let err = Cli::try_parse_args(["kubectl-pullgate", "diagnose"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("kubectl pullgate diagnose"), "{err}");
    }
}

/// `--gate-timeout-action`: the flag's spelling of [`crate::decide::gate::TimeoutAction`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GateTimeoutAction {
    /// Remove the taint anyway (a broken registry must not freeze an autoscaler).
    Remove,
    /// Keep the taint until the gate opens.
    Keep,
}

impl From<GateTimeoutAction> for crate::decide::gate::TimeoutAction {
    fn from(action: GateTimeoutAction) -> Self {
        match action {
            GateTimeoutAction::Remove => Self::Remove,
            GateTimeoutAction::Keep => Self::Keep,
        }
    }
}
