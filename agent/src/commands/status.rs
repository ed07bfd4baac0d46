//! `pullgate status` and `pullgate canary`: clients of the local API, printed for people on call
//! (tables) or scripts (`--json`). `status` also reads the fleet from the API server: pullgate's
//! two conditions on each Node ([`crate::adapters::kube::fleet`]), when a Node or a cluster flag
//! is asked for, or when there is no agent socket here (off a node: `kubectl pullgate status`).

use crate::adapters::kube::fleet::{self, FleetError, NodeConditionState, NodeConditions};
use crate::adapters::kube::kubeconfig::KubeconfigError;
use crate::adapters::serve::local_api::{Client, LocalApiError, pb};
use crate::cli::{ApiSocket, CanaryArgs, DEFAULT_API_SOCKET, KubeArgs, StatusArgs};
use crate::commands::table::columns;
use crate::model::inventory::ObjectKey;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StatusCmdError {
    #[error("--api-socket is off: nothing to talk to")]
    NoSocket,
    #[error(transparent)]
    Kubeconfig(#[from] KubeconfigError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("`{0}` is not NAMESPACE/NAME")]
    BadPullSet(String),
    #[error(transparent)]
    Api(#[from] LocalApiError),
}

fn socket(path: &Option<PathBuf>) -> Result<&PathBuf, StatusCmdError> {
    path.as_ref().ok_or(StatusCmdError::NoSocket)
}

/// Where `status` reads.
#[derive(Debug, PartialEq, Eq)]
pub enum StatusSource {
    /// The agent on this node, through its local API socket.
    Local(ApiSocket),
    /// The API server: these Nodes (empty: all).
    Nodes(Vec<String>),
}

/// The rule: `--node`/`--all-nodes` or a cluster flag (`--kubeconfig`, `--context`, `--cluster`,
/// `--user`): the API server's Nodes; else `--api-socket` (flag or `PULLGATE_API_SOCKET`): that
/// socket; else the default socket when it exists; else (no agent here) every Node from the API
/// server. `-n` alone changes nothing (Nodes have no namespace).
pub fn source(
    api_socket: Option<ApiSocket>,
    nodes: &[String],
    all_nodes: bool,
    cluster: &KubeArgs,
    default_exists: impl FnOnce(&Path) -> bool,
) -> StatusSource {
    if !nodes.is_empty() || all_nodes || cluster.connects() {
        return StatusSource::Nodes(nodes.to_vec());
    }
    if let Some(socket) = api_socket {
        return StatusSource::Local(socket);
    }
    let default = PathBuf::from(DEFAULT_API_SOCKET);
    if default_exists(&default) {
        StatusSource::Local(ApiSocket(Some(default)))
    } else {
        StatusSource::Nodes(Vec::new())
    }
}

/// Prints the status; `Ok(true)` when every condition is True and every known verdict is Ok.
pub async fn status(args: StatusArgs) -> Result<bool, StatusCmdError> {
    let StatusArgs {
        api_socket,
        nodes,
        all_nodes,
        cluster,
        json,
    } = args;
    match source(api_socket, &nodes, all_nodes, &cluster, Path::exists) {
        StatusSource::Local(socket) => local_status(&socket, json).await,
        StatusSource::Nodes(nodes) => fleet_status(&cluster, &nodes, json).await,
    }
}

/// The fleet view: pullgate's conditions on each Node; `Ok(true)` when every Node asked carries
/// both, True.
async fn fleet_status(
    cluster: &KubeArgs,
    nodes: &[String],
    json: bool,
) -> Result<bool, StatusCmdError> {
    let connection = crate::adapters::kube::kubeconfig::connect(cluster).await?;
    let rows = fleet::read(&connection.client, nodes).await?;
    let healthy = rows.iter().all(|r| {
        [&r.critical_images_ready, &r.pull_credentials_valid]
            .into_iter()
            .all(|c| c.as_ref().is_some_and(|c| c.status == "True"))
    });
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
    } else {
        print!(
            "{}",
            crate::model::printable::printable_text(&render_fleet(&rows))
        );
    }
    Ok(healthy)
}

/// One row per Node: each condition's status, the reason of the first not True (its message
/// below the table), and since when the Node has been so (the later transition).
pub fn render_fleet(rows: &[NodeConditions]) -> String {
    let cell = |c: &Option<NodeConditionState>| {
        c.as_ref()
            .map(|c| c.status.clone())
            .unwrap_or_else(|| "-".into())
    };
    let table: Vec<[String; 5]> = rows
        .iter()
        .map(|r| {
            let both = [&r.critical_images_ready, &r.pull_credentials_valid];
            let failing = both
                .into_iter()
                .flatten()
                .find(|c| c.status != "True")
                .map(|c| c.reason.clone());
            let reason = match (failing, both.iter().all(|c| c.is_none())) {
                (Some(reason), _) => reason,
                (None, true) => "no pullgate conditions".into(),
                (None, false) => "-".into(),
            };
            let since = both
                .into_iter()
                .flatten()
                .filter_map(|c| c.since.clone())
                .max()
                .unwrap_or_else(|| "-".into());
            [
                r.node.clone(),
                cell(&r.critical_images_ready),
                cell(&r.pull_credentials_valid),
                reason,
                since,
            ]
        })
        .collect();
    let mut out = columns(
        &[
            "NODE",
            "IMAGES READY",
            "CREDENTIALS VALID",
            "REASON",
            "SINCE",
        ],
        &table,
    );
    if rows.is_empty() {
        out.push_str("no node\n");
    }
    for r in rows {
        for (type_, c) in fleet::CONDITION_TYPES
            .iter()
            .zip([&r.critical_images_ready, &r.pull_credentials_valid])
        {
            if let Some(c) = c.as_ref().filter(|c| c.status != "True") {
                out.push_str(&format!(
                    "\n{} {type_} {}: {}: {}\n",
                    r.node, c.status, c.reason, c.message
                ));
            }
        }
    }
    out
}

async fn local_status(socket_arg: &ApiSocket, json: bool) -> Result<bool, StatusCmdError> {
    let mut client = Client::connect(socket(&socket_arg.0)?).await?;
    let status = client.status().await?;
    let healthy = status.conditions.iter().all(|c| c.status == "True")
        && status.pullsets.iter().all(|s| {
            s.images.iter().all(|i| {
                [&i.prepull, &i.canary]
                    .into_iter()
                    .flatten()
                    .all(|v| v.verdict == "Ok")
            })
        });
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
    } else {
        print!(
            "{}",
            crate::model::printable::printable_text(&render_status(&status))
        );
    }
    Ok(healthy)
}

fn verdict_cell(v: Option<&pb::Verdict>) -> String {
    match v {
        None => "-".into(),
        Some(v) => v.verdict.clone(),
    }
}

/// The host that gave a canary's answer, `-` when none was named.
fn host_cell(v: Option<&pb::Verdict>) -> String {
    v.map(|v| v.host.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "-".into())
}

/// Whether a `pin: true` PullSet's image is pinned; `-` for any other PullSet and before the
/// first pre-pull.
fn pinned_cell(pinned: Option<bool>) -> String {
    match pinned {
        None => "-".into(),
        Some(true) => "yes".into(),
        Some(false) => "no".into(),
    }
}

/// The status as tables (conditions, then one row per PullSet image).
pub fn render_status(status: &pb::GetStatusResponse) -> String {
    let mut out = format!("node {}\n\n", status.node);
    for c in &status.conditions {
        out.push_str(&format!(
            "{:<22} {:<8} {:<14} {}\n",
            c.r#type, c.status, c.reason, c.message
        ));
    }
    if status.conditions.is_empty() {
        out.push_str("no condition yet\n");
    }
    out.push('\n');
    let mut rows = Vec::new();
    for s in &status.pullsets {
        for i in &s.images {
            let credential = [&i.canary, &i.prepull]
                .into_iter()
                .flatten()
                .map(|v| v.credential.clone())
                .find(|c| !c.is_empty())
                .unwrap_or_else(|| "-".into());
            rows.push([
                format!(
                    "{}/{}{}",
                    s.namespace,
                    s.name,
                    if s.gate { " (gate)" } else { "" }
                ),
                i.image.clone(),
                if i.present { "yes" } else { "no" }.into(),
                verdict_cell(i.prepull.as_ref()),
                verdict_cell(i.canary.as_ref()),
                host_cell(i.canary.as_ref()),
                credential,
                if s.next_canary_time.is_empty() {
                    "-".into()
                } else {
                    s.next_canary_time.clone()
                },
                if i.kubelet_access.is_empty() {
                    "-".into()
                } else {
                    i.kubelet_access.clone()
                },
                pinned_cell(i.pinned),
            ]);
        }
    }
    out.push_str(&columns(
        &[
            "PULLSET",
            "IMAGE",
            "PRESENT",
            "PRE-PULL",
            "CANARY",
            "CANARY HOST",
            "CREDENTIAL",
            "NEXT CANARY",
            "KUBELET ACCESS",
            "PINNED",
        ],
        &rows,
    ));
    for s in &status.pullsets {
        for i in &s.images {
            for (what, v) in [("pre-pull", &i.prepull), ("canary", &i.canary)] {
                if let Some(v) = v.as_ref().filter(|v| v.verdict != "Ok") {
                    out.push_str(&format!(
                        "\n{}/{} {} {what}: {}: {}\n  hint: {}\n",
                        s.namespace, s.name, i.image, v.verdict, v.message, v.hint
                    ));
                    if !v.host.is_empty() {
                        out.push_str(&format!("  host: {}\n", v.host));
                    }
                }
            }
        }
    }
    for s in &status.pullsets {
        for i in s
            .images
            .iter()
            .filter(|i| !i.kubelet_access_warning.is_empty())
        {
            out.push_str(&format!(
                "\n{}/{} {} kubelet access: {}: {}\n",
                s.namespace, s.name, i.image, i.kubelet_access, i.kubelet_access_warning
            ));
        }
    }
    for s in &status.pullsets {
        for i in s.images.iter().filter(|i| i.pinned == Some(false)) {
            out.push_str(&format!(
                "\n{}/{} {} pinned: no\n",
                s.namespace, s.name, i.image
            ));
            if !i.pin_warning.is_empty() {
                out.push_str(&format!("  why: {}\n", i.pin_warning));
            }
        }
    }
    for p in &status.problems {
        out.push_str(&format!("\nproblem: {p}\n"));
    }
    out
}

/// Runs canaries now; `Ok(true)` when every result is Ok (and there was at least one).
pub async fn canary(args: CanaryArgs) -> Result<bool, StatusCmdError> {
    let pullset = match &args.pullset {
        None => None,
        Some(s) => {
            let (ns, name) = s
                .split_once('/')
                .filter(|(ns, n)| !ns.is_empty() && !n.is_empty() && !n.contains('/'))
                .ok_or_else(|| StatusCmdError::BadPullSet(s.clone()))?;
            Some(ObjectKey::new(ns, name))
        }
    };
    let mut client = Client::connect(socket(&args.api.path.0)?).await?;
    let mut all_ok = true;
    let mut count = 0;
    client
        .canary(pullset, |r| {
            count += 1;
            let v = r.result.clone().unwrap_or_default();
            all_ok &= v.verdict == "Ok";
            if args.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                let mark = if v.verdict == "Ok" { "✓" } else { "✗" };
                let mut text = format!(
                    "{mark} {}/{} {}  {} ({} {}, {} ms)  {}\n",
                    r.namespace,
                    r.pullset,
                    r.image,
                    v.verdict,
                    r.path,
                    r.depth,
                    r.duration_ms,
                    v.message
                );
                if !v.credential.is_empty() {
                    text.push_str(&format!("    credential: {}\n", v.credential));
                }
                if !v.host.is_empty() {
                    text.push_str(&format!("    host: {}\n", v.host));
                }
                if v.verdict != "Ok" && !v.hint.is_empty() {
                    text.push_str(&format!("    hint: {}\n", v.hint));
                }
                // What the daemon relays came from registries and runtimes: printed escaped.
                print!("{}", crate::model::printable::printable_text(&text));
            }
        })
        .await?;
    if count == 0 && !args.json {
        println!("no canary ran (no PullSet with spec.canary selects this node)");
    }
    Ok(all_ok && count > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_reads_the_socket_on_a_node_and_the_api_server_off_it() {
        let kube = |context: Option<&str>, namespace: Option<&str>| KubeArgs {
            context: context.map(str::to_string),
            namespace: namespace.map(str::to_string),
            ..KubeArgs::default()
        };
        let given = || Some(ApiSocket(Some(PathBuf::from("/s"))));
        let nodes = |n: &[&str]| StatusSource::Nodes(n.iter().map(|s| s.to_string()).collect());
        let default_socket =
            StatusSource::Local(ApiSocket(Some(PathBuf::from(DEFAULT_API_SOCKET))));
        for (socket, named, all, flags, exists, expected) in [
            // On a node: the default socket.
            (None, &[][..], false, kube(None, None), true, default_socket),
            // -n says nothing of where.
            (
                None,
                &[],
                false,
                kube(None, Some("x")),
                true,
                StatusSource::Local(ApiSocket(Some(PathBuf::from(DEFAULT_API_SOCKET)))),
            ),
            // Off a node (no socket): every Node.
            (None, &[], false, kube(None, None), false, nodes(&[])),
            // An --api-socket given is used even when absent (its error names it).
            (
                given(),
                &[],
                false,
                kube(None, None),
                false,
                StatusSource::Local(ApiSocket(Some(PathBuf::from("/s")))),
            ),
            // A Node, all Nodes, or a cluster flag: the API server, socket or not.
            (
                None,
                &["n1", "n2"],
                false,
                kube(None, None),
                true,
                nodes(&["n1", "n2"]),
            ),
            (None, &[], true, kube(None, None), true, nodes(&[])),
            (None, &[], false, kube(Some("prod"), None), true, nodes(&[])),
        ] {
            let named: Vec<String> = named.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                source(socket, &named, all, &flags, |_| exists),
                expected,
                "{named:?} {all} {flags:?} {exists}"
            );
        }
    }

    #[test]
    fn the_fleet_table_has_a_row_per_node_and_says_why_not() {
        let c = |status: &str, reason: &str, since: &str| {
            Some(NodeConditionState {
                status: status.into(),
                reason: reason.into(),
                message: format!("{reason} message"),
                since: Some(since.into()),
            })
        };
        let rows = [
            NodeConditions {
                node: "a".into(),
                critical_images_ready: c("True", "Ok", "2026-01-01T00:00:00Z"),
                pull_credentials_valid: c("True", "Ok", "2026-01-02T00:00:00Z"),
            },
            NodeConditions {
                node: "b".into(),
                critical_images_ready: c("True", "Ok", "2026-01-01T00:00:00Z"),
                pull_credentials_valid: c("False", "Unauthorized", "2026-01-03T00:00:00Z"),
            },
            NodeConditions {
                node: "c".into(),
                critical_images_ready: None,
                pull_credentials_valid: None,
            },
        ];
        let table = render_fleet(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "NODE  IMAGES READY  CREDENTIALS VALID  REASON                  SINCE"
        );
        assert_eq!(
            lines[1],
            "a     True          True               -                       2026-01-02T00:00:00Z"
        );
        assert_eq!(
            lines[2],
            "b     True          False              Unauthorized            2026-01-03T00:00:00Z"
        );
        assert_eq!(
            lines[3],
            "c     -             -                  no pullgate conditions  -"
        );
        assert!(
            table.contains("\nb PullCredentialsValid False: Unauthorized: Unauthorized message\n"),
            "{table}"
        );
        assert_eq!(
            render_fleet(&[]),
            "NODE  IMAGES READY  CREDENTIALS VALID  REASON  SINCE\nno node\n"
        );
    }

    #[test]
    fn status_table_shows_verdicts_credentials_and_why() {
        let status = pb::GetStatusResponse {
            node: "n1".into(),
            conditions: vec![pb::Condition {
                r#type: "PullCredentialsValid".into(),
                status: "False".into(),
                reason: "Unauthorized".into(),
                message: "Unauthorized: payments/critical r/api:1".into(),
                last_transition_time: "2026-11-23T00:00:00Z".into(),
            }],
            pullsets: vec![pb::PullSetStatus {
                namespace: "payments".into(),
                name: "critical".into(),
                gate: true,
                pre_pull: true,
                canary: true,
                next_canary_time: "2026-11-23T01:00:00Z".into(),
                images: vec![pb::ImageStatus {
                    image: "r/api:1".into(),
                    present: true,
                    prepull: Some(pb::Verdict {
                        verdict: "Ok".into(),
                        credential: "secret payments/regcred key r".into(),
                        ..Default::default()
                    }),
                    canary: Some(pb::Verdict {
                        verdict: "Unauthorized".into(),
                        message: "401".into(),
                        hint: "rotate the secret".into(),
                        credential: "secret payments/regcred key r".into(),
                        host: "mirror.example:5000".into(),
                        ..Default::default()
                    }),
                    kubelet_access: "AnyPod".into(),
                    kubelet_access_warning: "r/api:1 was pre-pulled with a credential, but any pod on this node can start it without one".into(),
                    pinned: Some(false),
                    pin_warning: "PinNotAllowed: spec.pin is ignored: namespace payments may not pin images".into(),
                }],
                pin: true,
            }],
            problems: vec!["Secret x/y: bad".into()],
        };
        let text = render_status(&status);
        for expected in [
            "PullCredentialsValid   False    Unauthorized",
            "payments/critical (gate)  r/api:1  yes",
            "PRE-PULL  CANARY        CANARY HOST          CREDENTIAL",
            "Ok        Unauthorized  mirror.example:5000  secret payments/regcred key r  2026-11-23T01:00:00Z  AnyPod          no",
            "KUBELET ACCESS  PINNED",
            "payments/critical r/api:1 pinned: no\n  why: PinNotAllowed: spec.pin is ignored: namespace payments may not pin images\n",
            "payments/critical r/api:1 kubelet access: AnyPod: r/api:1 was pre-pulled with a credential, but any pod on this node can start it without one\n",
            "payments/critical r/api:1 canary: Unauthorized: 401\n  hint: rotate the secret\n  host: mirror.example:5000\n",
            "problem: Secret x/y: bad",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
    }

    #[test]
    fn the_canary_host_column_shows_a_dash_when_no_host_was_named() {
        let image = |image: &str, host: &str| pb::ImageStatus {
            image: image.into(),
            present: true,
            prepull: None,
            canary: Some(pb::Verdict {
                verdict: "Ok".into(),
                host: host.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let status = pb::GetStatusResponse {
            node: "n1".into(),
            pullsets: vec![pb::PullSetStatus {
                namespace: "team".into(),
                name: "app".into(),
                images: vec![
                    image("r/a:1", "127.0.0.1:5000"),
                    pb::ImageStatus {
                        pinned: Some(true),
                        ..image("r/b:1", "")
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render_status(&status);
        let cells = |image: &str| -> Vec<String> {
            let line = text
                .lines()
                .find(|l| l.contains(image))
                .unwrap_or_else(|| panic!("{image} not in\n{text}"));
            line.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        };
        assert_eq!(
            cells("r/a:1"),
            [
                "team/app",
                "r/a:1",
                "yes",
                "-",
                "Ok",
                "127.0.0.1:5000",
                "-",
                "-",
                "-",
                "-"
            ],
            "{text}"
        );
        assert_eq!(
            cells("r/b:1"),
            [
                "team/app", "r/b:1", "yes", "-", "Ok", "-", "-", "-", "-", "yes"
            ],
            "{text}"
        );
        assert!(!text.contains("pinned: no"), "{text}");
    }
}
