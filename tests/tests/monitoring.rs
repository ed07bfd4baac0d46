//! `manifests/monitoring`: the PrometheusRule and the Grafana dashboard, checked with Prometheus's
//! own tools and against a real agent.
//!
//! - `promtool check rules` on the rule groups, and `promtool test rules` with
//!   `tests/data/monitoring/pullgate-alerts.test.yaml`: each alert firing and not firing with its
//!   real `for:`; every alert has a severity, a summary, a description and a runbook, and every
//!   label an annotation names is one the alert has;
//! - the dashboard: valid JSON, a datasource variable used by every panel and query, a `node`
//!   variable, only defined variables; kustomize makes it a ConfigMap with the Grafana sidecar's
//!   label;
//! - a real registry, containerd, agent and `prometheus` server loading the shipped rules: every
//!   metric name the rules, the dashboard and the promtool test series use, and the test series'
//!   label sets, are the agent's own; the credential-invalid alert is not firing while the
//!   canaries pass, fires once the registry's password really changes, the canary alert names the
//!   PullSet and verdict, and the agent-down alert fires once the agent is gone.

#![allow(clippy::unwrap_used)] // test fixtures: a failed set-up step should panic with its error

use base64::Engine as _;
use pullgate_testenv::manifests::{canaried_pullset, pull_secret};
use pullgate_testenv::process::{free_port, wait_until};
use pullgate_testenv::prometheus::{Prometheus, rule_groups, run_promtool};
use pullgate_testenv::{
    Containerd, ImageSpec, PASSWORD, Registry, TestEnv, USER, assert_nowhere, http, kustomize,
    password_forms, workspace_root,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const RULE: &str = "manifests/monitoring/prometheusrule.yaml";
const DASHBOARD: &str = "manifests/monitoring/grafana-dashboard.json";
const RULE_TESTS: &str = "tests/data/monitoring/pullgate-alerts.test.yaml";
/// The file name the promtool test file's `rule_files` names.
const RULES_FILE: &str = "pullgate-rules.yaml";
/// The `job` label the PodMonitor of manifests/examples/podmonitor.yaml gives its targets (the
/// Prometheus Operator's default: the PodMonitor's namespace/name).
const JOB: &str = "monitoring/pullgate";
/// Labels the scrape adds to every series (the target's, from the PodMonitor), not the agent.
const TARGET_LABELS: [&str; 7] = [
    "job",
    "instance",
    "namespace",
    "pod",
    "node",
    "container",
    "endpoint",
];
/// Series Prometheus makes itself.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];
/// Families a standalone agent exports with no sample (so no label set to compare), with the
/// label names their samples carry and why there are none here.
const SAMPLELESS: [(&str, &[&str], &str); 4] = [
    (
        "pullgate_events_total",
        &["reason"],
        "Events are written in cluster mode only",
    ),
    (
        "pullgate_image_fs_free_bytes",
        &["mountpoint"],
        IMAGE_FS_UNREAD,
    ),
    (
        "pullgate_image_fs_capacity_bytes",
        &["mountpoint"],
        IMAGE_FS_UNREAD,
    ),
    (
        "pullgate_image_fs_readable",
        &["mountpoint"],
        IMAGE_FS_UNREAD,
    ),
];
/// The test agents run with `--min-free-disk 0` (tests/src/agent.rs), and with the headroom off
/// the image filesystem is never read.
const IMAGE_FS_UNREAD: &str = "the image filesystem is read only with --min-free-disk on";
/// Grafana's own variables.
const GRAFANA_BUILTINS: [&str; 4] = ["__rate_interval", "__interval", "__range", "__all"];

const JWT_USER: &str = "oauth2accesstoken";
const ROTATED: &str = "pg-Rotated-Passw0rd-9e8d";
/// The agent's `--node-name` (tests/src/agent.rs), and the `node` label the test's scrape gives
/// its target, as the PodMonitor's relabeling does from the pod's node.
const NODE: &str = "test-node";

fn read(rel: &str) -> String {
    let path = workspace_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The alerting rules of the PrometheusRule, by alert name.
fn alert_rules(groups: &serde_yaml::Value) -> BTreeMap<String, serde_yaml::Value> {
    let mut rules = BTreeMap::new();
    for group in groups["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"]
                .as_str()
                .unwrap_or_else(|| panic!("{RULE}: a rule without `alert`: {rule:?}"));
            assert!(
                rules.insert(name.to_owned(), rule.clone()).is_none(),
                "{RULE}: alert {name} twice"
            );
        }
    }
    rules
}

/// `groups` with every rule changed by `edit`.
fn edited(groups: &serde_yaml::Value, edit: impl Fn(&mut serde_yaml::Mapping)) -> String {
    let mut groups = groups.clone();
    for group in groups["groups"].as_sequence_mut().unwrap() {
        for rule in group["rules"].as_sequence_mut().unwrap() {
            edit(rule.as_mapping_mut().unwrap());
        }
    }
    serde_yaml::to_string(&groups).unwrap()
}

/// The names a Go template's `$labels.X` reads.
fn template_labels(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("$labels.") {
        rest = &rest[at + "$labels.".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

/// The promtool test file's `alert_rule_test` entries, by alert: the label sets of the alerts
/// expected firing, and whether a case expects none.
fn rule_test_cases(tests: &serde_yaml::Value) -> BTreeMap<String, (Vec<BTreeSet<String>>, bool)> {
    let mut cases: BTreeMap<String, (Vec<BTreeSet<String>>, bool)> = BTreeMap::new();
    for test in tests["tests"].as_sequence().unwrap() {
        for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().unwrap().to_owned();
            let entry = cases.entry(name).or_default();
            let expected = case["exp_alerts"].as_sequence().unwrap();
            if expected.is_empty() {
                entry.1 = true;
            }
            for alert in expected {
                let labels = alert["exp_labels"]
                    .as_mapping()
                    .unwrap()
                    .keys()
                    .map(|k| k.as_str().unwrap().to_owned())
                    .collect();
                entry.0.push(labels);
            }
        }
    }
    cases
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let groups = rule_groups(&read(RULE)).unwrap();
    let alerts = alert_rules(&groups);
    let dir = tempfile::tempdir().unwrap();

    // The shipped groups, annotations and all (promtool checks their templates too).
    std::fs::write(
        dir.path().join(RULES_FILE),
        serde_yaml::to_string(&groups).unwrap(),
    )
    .unwrap();
    let out = run_promtool(dir.path(), &["check", "rules", RULES_FILE]).unwrap();
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{out}"
    );

    // promtool compares annotations whole: the unit tests run on the rules without them (what
    // they would say is checked below), with the real expressions, labels and `for:`.
    std::fs::write(
        dir.path().join(RULES_FILE),
        edited(&groups, |rule| {
            rule.remove("annotations");
        }),
    )
    .unwrap();
    let test_file = dir.path().join("pullgate-alerts.test.yaml");
    std::fs::write(&test_file, read(RULE_TESTS)).unwrap();
    let out = run_promtool(dir.path(), &["test", "rules", "pullgate-alerts.test.yaml"]).unwrap();
    assert!(out.contains("SUCCESS"), "{out}");

    // Each alert is tested firing and not firing, and says what an operator needs.
    let tests: serde_yaml::Value = serde_yaml::from_str(&read(RULE_TESTS)).unwrap();
    let cases = rule_test_cases(&tests);
    for (name, rule) in &alerts {
        let (firing, quiet) = cases
            .get(name)
            .unwrap_or_else(|| panic!("{RULE_TESTS}: no test of alert {name}"));
        assert!(
            !firing.is_empty(),
            "{RULE_TESTS}: {name} is never expected firing"
        );
        assert!(*quiet, "{RULE_TESTS}: {name} is never expected quiet");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{RULE}: {name}: severity {severity:?}"
        );
        for annotation in ["summary", "description", "runbook"] {
            let text = rule["annotations"][annotation].as_str().unwrap_or_default();
            assert!(
                text.len() > 20,
                "{RULE}: {name}: annotation {annotation} missing or empty"
            );
            // A label the alert does not carry renders as nothing: "on node " in a page.
            for label in template_labels(text) {
                assert!(
                    firing.iter().all(|labels| labels.contains(&label)),
                    "{RULE}: {name}: {annotation} names $labels.{label}, which the alert does not carry (its labels in {RULE_TESTS}: {firing:?})"
                );
            }
        }
        let runbook = rule["annotations"]["runbook"].as_str().unwrap();
        assert!(
            runbook.contains("`pullgate ") || runbook.contains("`kubectl "),
            "{RULE}: {name}: the runbook names no command to run"
        );
    }
}

/// Every `$name`, `${name}` and `[[name]]` in `text`.
fn variables_used(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let word = |from: usize| -> String {
        text[from..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                out.insert(word(i + 2));
            }
            b'$' => {
                let w = word(i + 1);
                if !w.is_empty() {
                    out.insert(w);
                }
            }
            b'[' if bytes.get(i + 1) == Some(&b'[') => {
                out.insert(word(i + 2));
            }
            _ => {}
        }
    }
    out
}

/// Every panel, rows' nested panels included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        out.push(panel);
        out.extend(panel["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Every PromQL expression of the dashboard: the panels' targets and the query variables'.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let mut out: Vec<String> = all_panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            out.push(variable["query"]["query"].as_str().unwrap().to_owned());
        }
    }
    out
}

#[test]
fn the_dashboard_uses_a_datasource_variable_and_only_defined_variables() {
    let text = read(DASHBOARD);
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let variables: BTreeMap<&str, &Value> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let datasource = variables
        .get("datasource")
        .expect("a `datasource` variable");
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let node = variables.get("node").expect("a `node` variable");
    assert_eq!(node["type"], "query");
    for name in ["namespace", "registry"] {
        assert!(variables.contains_key(name), "no `{name}` variable");
    }

    let by_datasource = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    let mut ids = BTreeSet::new();
    let mut node_panels = 0;
    for panel in all_panels(&dashboard) {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id twice"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"], by_datasource, "{title}: datasource");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(
                target["datasource"], by_datasource,
                "{title}: target datasource"
            );
            let expr = target["expr"].as_str().unwrap();
            assert!(
                expr.contains("pullgate_") || expr.contains("up{"),
                "{title}: {expr}"
            );
            if expr.contains("$node") {
                node_panels += 1;
            }
        }
    }
    assert!(
        node_panels >= 4,
        "the per-node drill-down has {node_panels} queries"
    );
    for variable in variables.values() {
        if variable["type"] == "query" {
            assert_eq!(variable["datasource"], by_datasource, "{variable}");
        }
    }
    // Every variable a query, title or legend names is defined (or is Grafana's own).
    let used = variables_used(&text);
    for name in &used {
        assert!(
            variables.contains_key(name.as_str()) || GRAFANA_BUILTINS.contains(&name.as_str()),
            "{DASHBOARD}: ${name} is not a variable of the dashboard"
        );
    }
    // Expiry timeline, fleet by registry/namespace/verdict: present.
    let queries = dashboard_queries(&dashboard).join("\n");
    for needle in [
        "pullgate_credential_expiry_timestamp_seconds",
        "by (namespace, verdict)",
        "by (registry, verdict)",
    ] {
        assert!(queries.contains(needle), "no dashboard query has {needle}");
    }

    // kustomize ships it as the Grafana sidecar's ConfigMap, the JSON unchanged, beside the rule.
    let objs = kustomize::render("monitoring");
    let config_map = objs
        .iter()
        .find(|o| o.kind() == "ConfigMap")
        .expect("a ConfigMap");
    assert_eq!(
        config_map.str_at("/metadata/labels/grafana_dashboard"),
        Some("1")
    );
    assert_eq!(
        config_map.str_at("/data/pullgate.json"),
        Some(text.as_str())
    );
    assert!(objs.iter().any(|o| o.kind() == "PrometheusRule"));
}

// ---------------------------------------------------------------------------------------------
// Against a real agent and a real Prometheus
// ---------------------------------------------------------------------------------------------

/// What a `/metrics` exposition holds: every sample name a query may use (a counter's `_total`,
/// a histogram's `_bucket`/`_sum`/`_count`, with or without samples yet), and the label-name sets
/// of the samples each name has.
struct Exposition {
    names: BTreeSet<String>,
    labels: BTreeMap<String, BTreeSet<BTreeSet<String>>>,
}

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut names = BTreeSet::new();
        let mut labels: BTreeMap<String, BTreeSet<BTreeSet<String>>> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                let (name, kind) = (words.next().unwrap(), words.next().unwrap());
                let suffixes: &[&str] = match kind {
                    "counter" => &["_total"],
                    "histogram" => &["_bucket", "_sum", "_count"],
                    _ => &[""],
                };
                names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
            } else if !line.starts_with('#') && !line.is_empty() {
                let (name, set) = series_labels(line);
                labels.entry(name).or_default().insert(set);
            }
        }
        Self { names, labels }
    }
}

/// A sample or series selector `name{a="x",b="y"} …`: its name and label names.
fn series_labels(line: &str) -> (String, BTreeSet<String>) {
    let name: String = line
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
        .collect();
    let mut set = BTreeSet::new();
    if let Some(rest) = line[name.len()..].strip_prefix('{') {
        let mut chars = rest.chars().peekable();
        loop {
            let label: String = chars
                .by_ref()
                .take_while(|c| *c != '=')
                .collect::<String>()
                .trim_matches([',', ' '])
                .to_owned();
            if label.is_empty() || label.starts_with('}') {
                break;
            }
            assert_eq!(chars.next(), Some('"'), "{line}: label {label}");
            let mut escaped = false;
            for c in chars.by_ref() {
                match (escaped, c) {
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    _ => escaped = false,
                }
            }
            set.insert(label);
            if chars.peek() == Some(&'}') {
                break;
            }
        }
    }
    (name, set)
}

/// Every `pullgate_…` name in `query`.
fn metric_names(query: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = query;
    while let Some(at) = rest.find("pullgate_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.insert(name);
    }
    out
}

/// A JWT-shaped password that expires in three days (the agent reads `exp`).
fn jwt_expiring_in_three_days() -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3 * 86_400;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.sig",
        b64(r#"{"alg":"RS256"}"#),
        b64(&format!(r#"{{"exp":{exp},"sub":"ci"}}"#))
    )
}

/// Scrapes the agent's `/metrics` until `settled` holds: the last exposition.
fn scrape_until(port: u16, what: &str, settled: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    wait_until(what, Duration::from_secs(90), || {
        last = http::get(port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default();
        settled(&last)
    })
    .unwrap_or_else(|e| panic!("{e}\nlast scrape:\n{last}"));
    last
}

/// The alert `name` in `state` whose labels include `labels`, polled for up to `timeout`.
fn wait_alert(
    prometheus: &Prometheus,
    name: &str,
    state: &str,
    labels: &[(&str, &str)],
    timeout: Duration,
) -> Value {
    let mut found = None;
    let mut last = Vec::new();
    let matches = |a: &Value| {
        a["labels"]["alertname"] == name
            && a["state"] == state
            && labels.iter().all(|(k, v)| a["labels"][*k] == *v)
    };
    wait_until(&format!("alert {name} {state}"), timeout, || {
        last = prometheus.alerts().unwrap_or_default();
        found = last.iter().find(|a| matches(a)).cloned();
        found.is_some()
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e} with labels {labels:?}; alerts: {last:?}\nprometheus log:\n{}",
            prometheus.log()
        )
    });
    found.unwrap()
}

#[test]
fn alerts_fire_from_a_real_agent_when_its_credential_breaks_and_when_it_is_gone() {
    // A registry where the PullSet's credential is a JWT that expires in three days.
    let jwt = jwt_expiring_in_three_days();
    let registry = Registry::start(&[(USER, PASSWORD), (JWT_USER, &jwt)]).unwrap();
    let containerd = Containerd::start(&[registry.host()]).unwrap();
    let manifests = tempfile::tempdir().unwrap();
    let mut env = TestEnv {
        registry,
        containerd,
        manifests,
    };
    let host = env.registry.host();
    let image = env.push(&ImageSpec::new("team/app", "v1")).unwrap();
    env.write_manifest(
        "secret.yaml",
        &pull_secret("team", "token", &host, JWT_USER, &jwt),
    )
    .unwrap();
    env.write_manifest(
        "set.yaml",
        &canaried_pullset(
            "team",
            "critical",
            &image.by_tag,
            &["token"],
            "schedule: '*/2 * * * * *', jitter: 0s, depth: manifest",
        ),
    )
    .unwrap();
    let port = free_port().unwrap();
    let mut agent = Some(
        env.agent()
            .canary_defaults(&host)
            .args(&["--metrics-addr", &format!("127.0.0.1:{port}")])
            .spawn()
            .unwrap(),
    );
    let running = agent.as_ref().unwrap();
    running
        .wait_for("credentials valid", Duration::from_secs(90), 1, |l| {
            l["kind"] == "condition" && l["type"] == "PullCredentialsValid" && l["status"] == "True"
        })
        .unwrap();
    // The start-up canary can report before the first pre-pull pass has: wait for both.
    let exposition = scrape_until(port, "the canary, expiry and pre-pull series", |m| {
        m.contains("pullgate_canary_images{")
            && m.contains("pullgate_credential_expiry_timestamp_seconds{")
            && m.contains("pullgate_prepull_outcomes_total{")
            && m.contains("pullgate_images_pulled_total{")
    });
    let exported = Exposition::parse(&exposition);

    // Every metric name the rules, the dashboard and the promtool test use is the agent's.
    let groups = rule_groups(&read(RULE)).unwrap();
    let dashboard: Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut used: BTreeMap<String, String> = BTreeMap::new();
    for (name, rule) in alert_rules(&groups) {
        for metric in metric_names(rule["expr"].as_str().unwrap()) {
            used.insert(metric, format!("{RULE}: {name}"));
        }
    }
    for query in dashboard_queries(&dashboard) {
        for metric in metric_names(&query) {
            used.insert(metric, format!("{DASHBOARD}: {query}"));
        }
    }
    let tests: serde_yaml::Value = serde_yaml::from_str(&read(RULE_TESTS)).unwrap();
    let test_series: Vec<String> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| t["input_series"].as_sequence().unwrap())
        .map(|s| s["series"].as_str().unwrap().to_owned())
        .collect();
    for series in &test_series {
        for metric in metric_names(series) {
            used.insert(metric, format!("{RULE_TESTS}: {series}"));
        }
    }
    assert!(used.len() >= 10, "{used:?}");
    for (metric, at) in &used {
        // A family with no sample yet is not in the exposition at all (prometheus-client).
        assert!(
            exported.names.contains(metric) || SAMPLELESS.iter().any(|(n, _, _)| n == metric),
            "{at}: `{metric}` is not a metric the agent exports:\n{exposition}"
        );
    }
    // Every test series has the label names the agent gives that metric, plus target labels.
    for series in &test_series {
        let (name, labels) = series_labels(series);
        if PROMETHEUS_SERIES.contains(&name.as_str()) {
            continue;
        }
        let agent_sets: BTreeSet<BTreeSet<String>> = match exported.labels.get(&name) {
            Some(sets) => sets.clone(),
            None => {
                let (_, set, why) = SAMPLELESS
                    .iter()
                    .find(|(n, _, _)| *n == name)
                    .unwrap_or_else(|| panic!("{RULE_TESTS}: {series}: the agent exported no `{name}` sample in this run"));
                eprintln!("{name}: no sample ({why}); its labels are taken as {set:?}");
                [set.iter().map(|s| s.to_string()).collect()].into()
            }
        };
        assert!(
            agent_sets.iter().any(|own| own.is_subset(&labels)
                && labels
                    .difference(own)
                    .all(|l| TARGET_LABELS.contains(&l.as_str()))),
            "{RULE_TESTS}: {series}: labels {labels:?} are not the agent's {agent_sets:?} plus target labels {TARGET_LABELS:?}"
        );
    }

    // A real Prometheus loads the shipped rules, `for:` shortened to 2s (the real durations are
    // promtool's business above), and scrapes the agent as the PodMonitor would: its job label,
    // honorLabels, the pod's namespace, name and node as target labels.
    let rules = edited(&groups, |rule| {
        if rule.contains_key("for") {
            rule.insert("for".into(), "2s".into());
        }
    });
    let config = format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [{RULES_FILE}]
scrape_configs:
  - job_name: pullgate
    honor_labels: true
    static_configs:
      - targets: ['127.0.0.1:{port}']
        labels: {{namespace: pullgate-system, pod: pullgate-test, node: {NODE}}}
    relabel_configs:
      - target_label: job
        replacement: {JOB}
"#
    );
    let prometheus = Prometheus::start(&config, &[(RULES_FILE, &rules)]).unwrap();
    let loaded = prometheus.rules().unwrap();
    assert_eq!(loaded.len(), alert_rules(&groups).len(), "{loaded:?}");

    // The credentials are valid: once Prometheus holds the condition True and has evaluated the
    // rules after that, the credentials-invalid alert is inactive.
    let mut seen_at = 0.0;
    wait_until("Prometheus holding PullCredentialsValid True", Duration::from_secs(60), || {
        let result = prometheus
            .query(r#"pullgate_node_condition{condition="PullCredentialsValid",status="True",node="test-node",job="monitoring/pullgate"} == 1"#)
            .unwrap_or_default();
        if let Some(sample) = result.first() {
            seen_at = sample["value"][0].as_f64().unwrap_or_default();
        }
        !result.is_empty()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", prometheus.log()));
    let evaluated_after = |prometheus: &Prometheus, alert: &str, after: f64| -> Option<Value> {
        let rules = prometheus.rules().ok()?;
        let rule = rules.into_iter().find(|r| r["name"] == alert)?;
        let at = chrono::DateTime::parse_from_rfc3339(rule["lastEvaluation"].as_str()?).ok()?;
        (at.timestamp_millis() as f64 / 1000.0 > after + 1.0).then_some(rule)
    };
    let mut rule = None;
    wait_until(
        "the rules evaluated with the condition True",
        Duration::from_secs(60),
        || {
            rule = evaluated_after(&prometheus, "PullgateCredentialsInvalid", seen_at);
            rule.is_some()
        },
    )
    .unwrap();
    let rule = rule.unwrap();
    assert_eq!(rule["health"], "ok", "{rule}");
    assert_eq!(rule["state"], "inactive", "{rule}");

    // The credential is a Secret's JWT that expires in three days: expiring soon, by its source.
    let expiring = wait_alert(
        &prometheus,
        "PullgateCredentialExpiringSoon",
        "firing",
        &[
            ("namespace", "team"),
            ("pullset", "critical"),
            ("registry", &host),
            ("severity", "warning"),
        ],
        Duration::from_secs(60),
    );
    let credential = expiring["labels"]["credential"].as_str().unwrap();
    assert!(credential.starts_with("secret team/token"), "{expiring}");
    let summary = expiring["annotations"]["summary"].as_str().unwrap();
    assert!(summary.contains("expires in 2d 23h"), "{summary}");

    // The registry's password changes for real; the Secret does not: the canaries fail.
    env.registry.set_password(JWT_USER, ROTATED).unwrap();
    let invalid = wait_alert(
        &prometheus,
        "PullgateCredentialsInvalid",
        "firing",
        &[
            ("node", NODE),
            ("pod", "pullgate-test"),
            ("severity", "critical"),
        ],
        Duration::from_secs(120),
    );
    let summary = invalid["annotations"]["summary"].as_str().unwrap();
    assert!(summary.contains(NODE), "{summary}");
    let canary = wait_alert(
        &prometheus,
        "PullgateCanaryFailing",
        "firing",
        &[
            ("namespace", "team"),
            ("pullset", "critical"),
            ("registry", &host),
            ("path", "registry"),
            ("verdict", "Unauthorized"),
        ],
        Duration::from_secs(120),
    );
    let runbook = canary["annotations"]["runbook"].as_str().unwrap();
    assert!(
        runbook.contains("pullgate canary team/critical"),
        "{runbook}"
    );
    assert!(
        prometheus
            .alerts()
            .unwrap()
            .iter()
            .all(|a| a["labels"]["alertname"] != "PullgateAgentDown"),
        "the agent is up"
    );

    // The agent is gone: its target is down, and the agent-down alert fires for its node.
    let (stdout, stderr) = agent.take().unwrap().finish();
    wait_alert(
        &prometheus,
        "PullgateAgentDown",
        "firing",
        &[("node", NODE), ("job", JOB)],
        Duration::from_secs(60),
    );

    // No credential in anything the agent or Prometheus said or stored for a query.
    let alerts = serde_json::to_string(&prometheus.alerts().unwrap()).unwrap();
    let series = prometheus
        .get(&format!(
            "/api/v1/series?match[]={}",
            pullgate_testenv::prometheus::url_encoded(r#"{__name__=~"pullgate_.+"}"#)
        ))
        .unwrap()
        .1;
    let log = prometheus.log();
    let forms: Vec<(&str, String)> = [PASSWORD, jwt.as_str(), ROTATED]
        .iter()
        .flat_map(|s| password_forms(JWT_USER, s))
        .chain(password_forms(USER, PASSWORD))
        .collect();
    assert_nowhere(
        &[
            ("agent stdout", &stdout),
            ("agent stderr", &stderr),
            ("exposition", &exposition),
            ("Prometheus alerts", &alerts),
            ("Prometheus series", &series),
            ("Prometheus log", &log),
        ],
        &forms,
    );
}
