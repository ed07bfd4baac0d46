//! `pullgate status` and `pullgate canary`: clients of the local API, printed for people on call
//! (tables) or scripts (`--json`).

use crate::adapters::serve::local_api::{Client, LocalApiError, pb};
use crate::cli::{CanaryArgs, StatusArgs};
use crate::commands::table::columns;
use crate::model::inventory::ObjectKey;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StatusCmdError {
    #[error("--api-socket is off: nothing to talk to")]
    NoSocket,
    #[error("`{0}` is not NAMESPACE/NAME")]
    BadPullSet(String),
    #[error(transparent)]
    Api(#[from] LocalApiError),
}

fn socket(path: &Option<PathBuf>) -> Result<&PathBuf, StatusCmdError> {
    path.as_ref().ok_or(StatusCmdError::NoSocket)
}

/// Prints the status; `Ok(true)` when every condition is True and every known verdict is Ok.
pub async fn status(args: StatusArgs) -> Result<bool, StatusCmdError> {
    let mut client = Client::connect(socket(&args.api.path.0)?).await?;
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
    if args.json {
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
                }],
            }],
            problems: vec!["Secret x/y: bad".into()],
        };
        let text = render_status(&status);
        for expected in [
            "PullCredentialsValid   False    Unauthorized",
            "payments/critical (gate)  r/api:1  yes",
            "PRE-PULL  CANARY        CANARY HOST          CREDENTIAL",
            "Ok        Unauthorized  mirror.example:5000  secret payments/regcred key r  2026-11-23T01:00:00Z  AnyPod",
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
                images: vec![image("r/a:1", "127.0.0.1:5000"), image("r/b:1", "")],
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
                "-"
            ],
            "{text}"
        );
        assert_eq!(
            cells("r/b:1"),
            ["team/app", "r/b:1", "yes", "-", "Ok", "-", "-", "-", "-"],
            "{text}"
        );
    }
}
