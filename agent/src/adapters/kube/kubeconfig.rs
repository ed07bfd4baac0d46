//! Which API server, and as whom: the kubeconfig picked as kubectl picks it (client-go's
//! `clientcmd` loading rules), for every command that talks to a cluster.
//!
//! - `--kubeconfig FILE`: that file only; a file that cannot be read is an error naming it.
//! - else `$KUBECONFIG`: a `:`-separated list; empty entries and repeated paths are ignored, files
//!   that do not exist are skipped (as clientcmd does), the rest merged in order — the first file
//!   that sets a value (`current-context`, a context, cluster or user by name) wins;
//! - else `~/.kube/config` when it exists;
//! - else, with no `--context`/`--cluster`/`--user`, the in-cluster configuration (a pod's
//!   ServiceAccount), which is how `pullgate run` finds its API server in a DaemonSet.
//!
//! `--context` (else `current-context`) picks the context; `--cluster`/`--user` replace its
//! cluster or user. A context, cluster or user that the kubeconfig lacks is an error naming it,
//! the files read and the names it has. The namespace: `-n`, else the context's, else `default`
//! (in-cluster: the ServiceAccount's).

use crate::cli::KubeArgs;
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    #[error("cannot read kubeconfig {}: {message}", file.display())]
    Read { file: PathBuf, message: String },
    #[error("cannot merge kubeconfig {}: {message}", file.display())]
    Merge { file: PathBuf, message: String },
    #[error("{what} {name:?} is not in the kubeconfig ({files}); it has: {known}")]
    Missing {
        /// `context`, `cluster` or `user`.
        what: &'static str,
        name: String,
        files: String,
        known: String,
    },
    #[error(
        "the kubeconfig ({files}) sets no current-context: name one with --context (it has: {known})"
    )]
    NoCurrentContext { files: String, known: String },
    #[error("cannot configure the client from the kubeconfig ({files}): {message}")]
    Config { files: String, message: String },
    #[error(
        "no kubeconfig: --kubeconfig is not given, {env} and ~/.kube/config does not exist, and the in-cluster configuration is not available ({message})"
    )]
    Nothing { env: String, message: String },
    #[error("no kubeconfig to find --{flag} {name:?} in: {env} and ~/.kube/config does not exist")]
    NothingToSelectFrom {
        flag: &'static str,
        name: String,
        env: String,
    },
    #[error("cannot build the Kubernetes client: {0}")]
    Client(String),
}

/// A client, and the namespace the command works in.
pub struct Connection {
    pub client: kube::Client,
    /// `-n`, else the context's namespace, else `default` (in-cluster: the ServiceAccount's).
    pub namespace: String,
}

/// The kubeconfig files to read, in precedence order: `explicit`, else the `KUBECONFIG` list
/// (`env`, existing files only), else `home`'s `.kube/config` when it exists. Empty: none.
pub fn files(explicit: Option<&Path>, env: Option<&OsString>, home: Option<&Path>) -> Vec<PathBuf> {
    if let Some(file) = explicit {
        return vec![file.to_path_buf()];
    }
    if let Some(list) = env.filter(|v| !v.is_empty()) {
        let mut out: Vec<PathBuf> = Vec::new();
        for path in std::env::split_paths(list) {
            if !path.as_os_str().is_empty() && !out.contains(&path) && path.exists() {
                out.push(path);
            }
        }
        return out;
    }
    home.map(|h| h.join(".kube").join("config"))
        .filter(|p| p.exists())
        .into_iter()
        .collect()
}

/// Reads and merges `files` (the first to set a value wins).
pub fn read(files: &[PathBuf]) -> Result<Kubeconfig, KubeconfigError> {
    let mut merged = Kubeconfig::default();
    for file in files {
        let one = Kubeconfig::read_from(file).map_err(|e| KubeconfigError::Read {
            file: file.clone(),
            message: e.to_string(),
        })?;
        merged = merged.merge(one).map_err(|e| KubeconfigError::Merge {
            file: file.clone(),
            message: e.to_string(),
        })?;
    }
    Ok(merged)
}

/// The options for `kube`, once every name the flags give is known to be in `kc`.
pub fn select(
    kc: &Kubeconfig,
    flags: &KubeArgs,
    files: &[PathBuf],
) -> Result<KubeConfigOptions, KubeconfigError> {
    let shown = files
        .iter()
        .map(|f| f.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let names = |list: Vec<&String>| {
        if list.is_empty() {
            "none".to_string()
        } else {
            list.into_iter().cloned().collect::<Vec<_>>().join(", ")
        }
    };
    let contexts = names(kc.contexts.iter().map(|c| &c.name).collect());
    let context = match (&flags.context, &kc.current_context) {
        (Some(name), _) | (None, Some(name)) => name.clone(),
        (None, None) => {
            return Err(KubeconfigError::NoCurrentContext {
                files: shown,
                known: contexts,
            });
        }
    };
    let missing = |what, name: &str, known: String| KubeconfigError::Missing {
        what,
        name: name.to_string(),
        files: shown.clone(),
        known,
    };
    if !kc.contexts.iter().any(|c| c.name == context) {
        return Err(missing("context", &context, contexts));
    }
    if let Some(cluster) = &flags.cluster
        && !kc.clusters.iter().any(|c| &c.name == cluster)
    {
        let known = names(kc.clusters.iter().map(|c| &c.name).collect());
        return Err(missing("cluster", cluster, known));
    }
    if let Some(user) = &flags.user
        && !kc.auth_infos.iter().any(|u| &u.name == user)
    {
        let known = names(kc.auth_infos.iter().map(|u| &u.name).collect());
        return Err(missing("user", user, known));
    }
    Ok(KubeConfigOptions {
        context: Some(context),
        cluster: flags.cluster.clone(),
        user: flags.user.clone(),
    })
}

/// The client and namespace the flags pick, with pullgate's `User-Agent`.
pub async fn connect(flags: &KubeArgs) -> Result<Connection, KubeconfigError> {
    let env = std::env::var_os("KUBECONFIG");
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let files = files(flags.kubeconfig.as_deref(), env.as_ref(), home.as_deref());
    let env_said = match &env {
        Some(v) if !v.is_empty() => format!("no file of KUBECONFIG={} exists", v.to_string_lossy()),
        _ => "KUBECONFIG is not set".to_string(),
    };
    let mut config = if files.is_empty() {
        let chosen = [
            ("context", &flags.context),
            ("cluster", &flags.cluster),
            ("user", &flags.user),
        ];
        if let Some((flag, Some(name))) = chosen.into_iter().find(|(_, v)| v.is_some()) {
            return Err(KubeconfigError::NothingToSelectFrom {
                flag,
                name: name.clone(),
                env: env_said,
            });
        }
        kube::Config::incluster().map_err(|e| KubeconfigError::Nothing {
            env: env_said,
            message: e.to_string(),
        })?
    } else {
        let kc = read(&files)?;
        let options = select(&kc, flags, &files)?;
        kube::Config::from_custom_kubeconfig(kc, &options)
            .await
            .map_err(|e| KubeconfigError::Config {
                files: files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                message: e.to_string(),
            })?
    };
    super::identify(&mut config);
    let namespace = flags
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client =
        kube::Client::try_from(config).map_err(|e| KubeconfigError::Client(e.to_string()))?;
    Ok(Connection { client, namespace })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
        path
    }

    const A: &str = "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n- name: shared\n  cluster: {server: 'http://127.0.0.1:1'}\ncontexts:\n- name: a\n  context: {cluster: shared, user: u, namespace: from-a}\n- name: both\n  context: {cluster: shared, namespace: first-wins}\nusers:\n- name: u\n  user: {}\n";
    const B: &str = "apiVersion: v1\nkind: Config\ncurrent-context: b\nclusters:\n- name: shared\n  cluster: {server: 'http://127.0.0.1:2'}\n- name: other\n  cluster: {server: 'http://127.0.0.1:3'}\ncontexts:\n- name: b\n  context: {cluster: other}\n- name: both\n  context: {cluster: other, namespace: second-loses}\n";

    fn flags(context: Option<&str>) -> KubeArgs {
        KubeArgs {
            context: context.map(str::to_string),
            ..KubeArgs::default()
        }
    }

    #[test]
    fn files_follow_clientcmds_precedence() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let a = write(dir.path(), "a", A);
        let b = write(dir.path(), "b", B);
        let ghost = dir.path().join("ghost");
        let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let list = |paths: &[&Path]| Some(std::env::join_paths(paths).unwrap_or_default());
        // The explicit file only, whatever KUBECONFIG says; even one that does not exist (the
        // read then fails naming it).
        assert_eq!(
            files(Some(&ghost), list(&[&a]).as_ref(), None),
            std::slice::from_ref(&ghost)
        );
        // The list in order, missing files and repeats skipped, empty entries ignored.
        let env = Some(OsString::from(format!(
            "{}::{}:{}:{}",
            ghost.display(),
            b.display(),
            a.display(),
            b.display()
        )));
        assert_eq!(
            files(None, env.as_ref(), Some(home.path())),
            [b.clone(), a.clone()]
        );
        // A KUBECONFIG naming only missing files never falls back to ~/.kube/config.
        std::fs::create_dir_all(home.path().join(".kube")).unwrap_or_else(|e| panic!("{e}"));
        let home_config = write(&home.path().join(".kube"), "config", A);
        assert!(files(None, list(&[&ghost]).as_ref(), Some(home.path())).is_empty());
        // Unset or empty: ~/.kube/config when it exists, else nothing.
        assert_eq!(
            files(None, None, Some(home.path())),
            std::slice::from_ref(&home_config)
        );
        assert_eq!(
            files(None, Some(&OsString::new()), Some(home.path())),
            [home_config]
        );
        assert!(files(None, None, Some(dir.path())).is_empty());
    }

    #[test]
    fn the_first_file_to_set_a_value_wins_and_names_are_checked() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let files = [write(dir.path(), "a", A), write(dir.path(), "b", B)];
        let kc = read(&files).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(kc.current_context.as_deref(), Some("a"));
        let both = kc.contexts.iter().find(|c| c.name == "both");
        let namespace = both.and_then(|c| c.context.as_ref()?.namespace.clone());
        assert_eq!(namespace.as_deref(), Some("first-wins"));
        // `b` only exists in the second file, `other` too: both are found.
        let options = select(&kc, &flags(Some("b")), &files).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(options.context.as_deref(), Some("b"));
        let options = select(&kc, &flags(None), &files).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(options.context.as_deref(), Some("a"));
        let err = select(&kc, &flags(Some("nope")), &files)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("context \"nope\" is not in the kubeconfig")
                && err.contains("it has: a, both, b")
                && err.contains(&files[1].display().to_string()),
            "{err}"
        );
        let cluster = KubeArgs {
            cluster: Some("gone".into()),
            ..KubeArgs::default()
        };
        let err = select(&kc, &cluster, &files).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("cluster \"gone\"") && e.contains("shared, other")),
            "{err:?}"
        );
        let user = KubeArgs {
            user: Some("who".into()),
            ..KubeArgs::default()
        };
        let err = select(&kc, &user, &files).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("user \"who\"")),
            "{err:?}"
        );
        // No current-context and no --context: the contexts are named.
        let kc = read(&files[1..]).unwrap_or_else(|e| panic!("{e}"));
        let mut kc = kc;
        kc.current_context = None;
        let err = select(&kc, &flags(None), &files)
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("sets no current-context") && e.contains("b, both")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn the_namespace_is_the_flag_else_the_contexts_else_default() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = write(dir.path(), "a", A);
        let namespace = |context: Option<&str>, namespace: Option<&str>| {
            let flags = KubeArgs {
                kubeconfig: Some(file.clone()),
                context: context.map(str::to_string),
                namespace: namespace.map(str::to_string),
                ..KubeArgs::default()
            };
            async move { connect(&flags).await.map(|c| c.namespace) }
        };
        let ok = |r: Result<String, KubeconfigError>| r.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok(namespace(None, None).await), "from-a");
        assert_eq!(ok(namespace(Some("both"), None).await), "first-wins");
        assert_eq!(ok(namespace(None, Some("mine")).await), "mine");
        let b = write(dir.path(), "b", B);
        let flags = KubeArgs {
            kubeconfig: Some(b),
            ..KubeArgs::default()
        };
        assert_eq!(
            connect(&flags)
                .await
                .map(|c| c.namespace)
                .unwrap_or_else(|e| panic!("{e}")),
            "default"
        );
        let missing = KubeArgs {
            kubeconfig: Some(dir.path().join("ghost")),
            ..KubeArgs::default()
        };
        let err = connect(&missing).await.err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.starts_with("cannot read kubeconfig") && e.contains("ghost")),
            "{err:?}"
        );
    }
}
