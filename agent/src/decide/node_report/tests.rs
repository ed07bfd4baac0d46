use super::*;
use crate::decide::conditions::Tracker;

const S: Duration = Duration::from_secs(1);

fn config(action: TimeoutAction) -> NodeReportConfig {
    NodeReportConfig {
        node: "node-a".into(),
        taint_key: "pullgate.io/not-ready".into(),
        gate_timeout: 600 * S,
        gate_timeout_action: action,
        gate_namespaces: GateNamespaces::only(["ns"]),
        heartbeat: 60 * S,
        event_burst: 3,
        event_refill: 3600 * S,
    }
}

fn condition(type_: &'static str) -> Condition {
    Tracker::new(type_).current().clone()
}

fn event(n: usize) -> EventIntent {
    EventIntent::new(
        Regarding::PullSet(ObjectKey::new("ns", "critical")),
        Reason::PrePullFailed,
        format!("failure {n}"),
        &n.to_string(),
    )
}

/// Polls until nothing is left to do now, answering each request with `answer`.
fn drain(r: &mut NodeReport, mut answer: impl FnMut(&Step) -> Option<Reply>) -> Vec<Step> {
    let mut steps = Vec::new();
    while let Some(step) = r.poll(Instant::now()) {
        if let Some(reply) = answer(&step) {
            r.reply(reply, Instant::now());
        }
        steps.push(step);
        assert!(steps.len() < 1000, "the reporter loops: {steps:?}");
    }
    steps
}

fn all_ok(step: &Step) -> Option<Reply> {
    match step {
        Step::WriteConditions(_) => Some(Reply::Conditions(Ok(()))),
        Step::RemoveTaint => Some(Reply::Taint(Ok(TaintRemoval::Removed))),
        Step::PublishEvent(_) => Some(Reply::Event(Ok(()))),
        Step::Announce(_) | Step::Dropped(_) => None,
    }
}

fn writes(steps: &[Step]) -> usize {
    steps
        .iter()
        .filter(|s| matches!(s, Step::WriteConditions(_)))
        .count()
}

/// Advances paused time to the reporter's deadline.
async fn to_deadline(r: &NodeReport) -> Duration {
    let now = Instant::now();
    let deadline = r.deadline(now).expect("a deadline");
    tokio::time::advance(deadline - now).await;
    deadline - now
}

#[tokio::test(start_paused = true)]
async fn conditions_are_written_on_change_and_every_heartbeat() {
    let mut r = NodeReport::new(config(TimeoutAction::Remove), Instant::now());
    assert_eq!(drain(&mut r, all_ok), [], "nothing known, nothing written");
    assert_eq!(r.deadline(Instant::now()), None);

    r.condition(condition("CriticalImagesReady"));
    r.condition(condition("PullCredentialsValid"));
    let steps = drain(&mut r, all_ok);
    let [Step::WriteConditions(written)] = steps.as_slice() else {
        panic!("one write of both: {steps:?}");
    };
    assert_eq!(written.len(), 2);
    for _ in 0..3 {
        assert_eq!(to_deadline(&r).await, 60 * S, "the heartbeat");
        assert_eq!(writes(&drain(&mut r, all_ok)), 1);
    }
    // A change is written at once, and the heartbeat counts from it.
    tokio::time::advance(10 * S).await;
    r.condition(condition("CriticalImagesReady"));
    assert_eq!(writes(&drain(&mut r, all_ok)), 1);
    assert_eq!(to_deadline(&r).await, 60 * S);
}

#[tokio::test(start_paused = true)]
async fn a_failed_write_is_retried_with_backoff_and_the_latest_state_wins() {
    let mut r = NodeReport::new(config(TimeoutAction::Remove), Instant::now());
    r.condition(condition("CriticalImagesReady"));
    let fail = |step: &Step| match step {
        Step::WriteConditions(_) => Some(Reply::Conditions(Err(ApiErrorKind::Server))),
        other => all_ok(other),
    };
    assert_eq!(writes(&drain(&mut r, fail)), 1);
    // Steps of 1 s doubling to 30 s, each delay in [step/2, step).
    for step in [1, 2, 4, 8, 16, 30, 30] {
        let waited = to_deadline(&r).await;
        let step = step * S;
        assert!(
            waited >= step / 2 && waited < step,
            "{waited:?} for {step:?}"
        );
        assert_eq!(writes(&drain(&mut r, fail)), 1);
    }
    // A change meanwhile waits for the backoff too (no burst of writes), then the latest wins.
    let mut latest = condition("CriticalImagesReady");
    latest.reason = "Ok".into();
    r.condition(latest.clone());
    assert_eq!(writes(&drain(&mut r, fail)), 0);
    to_deadline(&r).await;
    let steps = drain(&mut r, all_ok);
    assert_eq!(steps, [Step::WriteConditions(vec![latest])]);
    assert_eq!(to_deadline(&r).await, 60 * S, "back to the heartbeat");

    // A denial (403) or a missing Node (404) waits the cap at once.
    r.condition(condition("CriticalImagesReady"));
    let denied = |step: &Step| match step {
        Step::WriteConditions(_) => Some(Reply::Conditions(Err(ApiErrorKind::Forbidden))),
        other => all_ok(other),
    };
    drain(&mut r, denied);
    let waited = to_deadline(&r).await;
    assert!(waited >= 15 * S && waited < 30 * S, "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn the_taint_is_removed_when_the_gate_opens_and_a_failed_removal_backs_off() {
    let start = Instant::now();
    let mut r = NodeReport::new(config(TimeoutAction::Remove), start);
    let gated = vec![(
        ObjectKey::new("ns", "critical"),
        "r.io/a@sha256:1".to_string(),
    )];
    r.node(Some(true), gated.clone());
    r.images_ready(true);
    assert_eq!(drain(&mut r, all_ok), [], "the canary has not run yet");
    r.canary_verdicts([(gated[0].clone(), Verdict::Ok)].into());

    // Removal is denied (403): the next try waits the 5 min cap, not a second.
    let denied = |step: &Step| match step {
        Step::RemoveTaint => Some(Reply::Taint(Err(ApiErrorKind::Forbidden))),
        other => all_ok(other),
    };
    assert_eq!(drain(&mut r, denied), [Step::RemoveTaint]);
    let waited = to_deadline(&r).await;
    assert!(waited >= 150 * S && waited < 300 * S, "{waited:?}");
    // A transient failure after that stays at the cap too.
    let unavailable = |step: &Step| match step {
        Step::RemoveTaint => Some(Reply::Taint(Err(ApiErrorKind::Server))),
        other => all_ok(other),
    };
    assert_eq!(drain(&mut r, unavailable), [Step::RemoveTaint]);
    assert!(to_deadline(&r).await >= 150 * S);

    // Removed: the GateOpened Event is announced and published.
    let steps = drain(&mut r, all_ok);
    assert_eq!(steps[0], Step::RemoveTaint);
    let Step::Announce(opened) = &steps[1] else {
        panic!("{steps:?}");
    };
    assert_eq!(opened.reason, Reason::GateOpened);
    assert!(
        opened
            .note
            .starts_with("removed taint pullgate.io/not-ready:NoSchedule after")
    );
    assert_eq!(steps[2], Step::PublishEvent(opened.clone()));
    assert_eq!(steps.len(), 3);
    // Until the Node's watch shows it gone, it is looked at once a second (it is absent).
    assert_eq!(to_deadline(&r).await, S);
    let absent = |step: &Step| match step {
        Step::RemoveTaint => Some(Reply::Taint(Ok(TaintRemoval::Absent))),
        other => all_ok(other),
    };
    assert_eq!(drain(&mut r, absent), [Step::RemoveTaint]);
    r.node(Some(false), gated);
    assert_eq!(r.deadline(Instant::now()), None);
    tokio::time::advance(S).await;
    assert_eq!(drain(&mut r, all_ok), []);
}

#[tokio::test(start_paused = true)]
async fn at_the_gate_timeout_the_taint_goes_or_stays_as_the_action_says() {
    for action in [TimeoutAction::Remove, TimeoutAction::Keep] {
        let start = Instant::now();
        let mut r = NodeReport::new(config(action), start);
        r.node(Some(true), Vec::new());
        r.images_ready(false);
        assert_eq!(drain(&mut r, all_ok), []);
        assert_eq!(to_deadline(&r).await, 600 * S, "{action:?}: the timeout");
        let steps = drain(&mut r, all_ok);
        let announced = steps.iter().find_map(|s| match s {
            Step::Announce(e) => Some(e.clone()),
            _ => None,
        });
        let announced = announced.expect("the timeout is announced");
        assert_eq!(announced.reason, Reason::GateTimedOut);
        assert!(
            announced.note.contains("CriticalImagesReady is False"),
            "{announced:?}"
        );
        match action {
            TimeoutAction::Remove => {
                assert_eq!(steps[0], Step::RemoveTaint);
                assert!(announced.note.starts_with("removed taint"));
            }
            TimeoutAction::Keep => {
                assert!(!steps.contains(&Step::RemoveTaint), "{steps:?}");
                assert!(announced.note.starts_with("kept taint"));
                // Once: later rounds say nothing more, and the gate still opens.
                tokio::time::advance(60 * S).await;
                assert_eq!(drain(&mut r, all_ok), []);
                r.images_ready(true);
                assert_eq!(drain(&mut r, all_ok)[0], Step::RemoveTaint);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn events_wait_while_the_api_server_is_away_and_pass_the_budget() {
    let mut r = NodeReport::new(config(TimeoutAction::Remove), Instant::now());
    let away = |step: &Step| match step {
        Step::PublishEvent(_) => Some(Reply::Event(Err(ApiErrorKind::Transport))),
        other => all_ok(other),
    };
    for n in 0..PENDING_EVENTS + 2 {
        r.event(event(n));
    }
    let steps = drain(&mut r, away);
    assert_eq!(
        steps[0],
        Step::Dropped(2),
        "the oldest dropped from the full queue"
    );
    assert!(
        matches!(&steps[1], Step::PublishEvent(e) if e.note.starts_with("failure 2 (2 earlier events not sent"))
    );
    assert_eq!(steps.len(), 2, "one try, then the backoff");
    to_deadline(&r).await;
    // Back: the first is sent again, then what the budget allows (burst 3, and the failed try
    // spent a token); the rest are dropped and counted.
    let steps = drain(&mut r, all_ok);
    let sent: Vec<&str> = steps
        .iter()
        .filter_map(|s| match s {
            Step::PublishEvent(e) => Some(e.note.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[0].starts_with("failure 2 "), "{sent:?}");
    let dropped: u64 = steps
        .iter()
        .map(|s| match s {
            Step::Dropped(n) => *n,
            _ => 0,
        })
        .sum();
    assert_eq!(dropped, PENDING_EVENTS as u64 - 2);
    // A rejection drops the Event instead of holding the others back.
    let mut r = NodeReport::new(config(TimeoutAction::Remove), Instant::now());
    r.event(event(1));
    r.event(event(2));
    let rejected = |step: &Step| match step {
        Step::PublishEvent(_) => Some(Reply::Event(Err(ApiErrorKind::Forbidden))),
        other => all_ok(other),
    };
    assert_eq!(drain(&mut r, rejected).len(), 2);
    assert_eq!(r.deadline(Instant::now()), None);
}

#[tokio::test(start_paused = true)]
async fn the_event_that_reports_drops_fits_the_api_servers_note_limit() {
    use crate::decide::event_policy::NOTE_LIMIT_BYTES;
    let mut r = NodeReport::new(config(TimeoutAction::Remove), Instant::now());
    for n in 0..PENDING_EVENTS + 2 {
        r.event(EventIntent::new(
            Regarding::PullSet(ObjectKey::new("ns", "critical")),
            Reason::PrePullFailed,
            "é".repeat(2500),
            &n.to_string(),
        ));
    }
    let steps = drain(&mut r, all_ok);
    let Some(Step::PublishEvent(e)) = steps.iter().find(|s| matches!(s, Step::PublishEvent(_)))
    else {
        panic!("nothing published: {steps:?}");
    };
    assert!(e.note.len() <= NOTE_LIMIT_BYTES, "{} bytes", e.note.len());
    assert!(
        e.note
            .ends_with("... (2 earlier events not sent: per-node event budget)"),
        "{}",
        e.note
    );
}

#[tokio::test(start_paused = true)]
async fn a_gating_pullset_outside_the_gate_namespaces_is_told_once_and_named_when_the_gate_opens() {
    let mut r = NodeReport::new(config(TimeoutAction::Remove), Instant::now());
    // What `gate::not_allowed` found: the gated set of `ns` is satisfied, `tenant/hog` does not
    // count (the config allows `ns` only).
    let hog = ObjectKey::new("tenant", "hog");
    r.node(Some(true), Vec::new());
    r.gate_not_allowed([hog.clone()].into());
    r.images_ready(true);
    let steps = drain(&mut r, all_ok);
    let published: Vec<&EventIntent> = steps
        .iter()
        .filter_map(|s| match s {
            Step::PublishEvent(e) => Some(e),
            _ => None,
        })
        .collect();
    let told: Vec<&&EventIntent> = published
        .iter()
        .filter(|e| e.reason == Reason::GateNotAllowed)
        .collect();
    assert_eq!(told.len(), 1, "{steps:?}");
    assert_eq!(told[0].regarding, Regarding::PullSet(hog.clone()));
    assert!(
        told[0].note.contains("namespace tenant"),
        "{}",
        told[0].note
    );
    assert!(
        told[0].note.contains("--gate-namespaces"),
        "{}",
        told[0].note
    );
    let opened = published
        .iter()
        .find(|e| e.reason == Reason::GateOpened)
        .unwrap_or_else(|| panic!("the taint stays: {steps:?}"));
    assert!(
        opened
            .note
            .ends_with("; not counted (gate: true outside --gate-namespaces ns): tenant/hog"),
        "{}",
        opened.note
    );

    // Seen again on every pass: not told again.
    r.gate_not_allowed([hog.clone()].into());
    r.node(Some(false), Vec::new());
    let again = drain(&mut r, all_ok);
    assert!(
        again
            .iter()
            .all(|s| !matches!(s, Step::PublishEvent(e) if e.reason == Reason::GateNotAllowed)),
        "{again:?}"
    );
    // Gone (allowed, or no longer gate: true), then back: told again.
    r.gate_not_allowed(BTreeSet::new());
    r.gate_not_allowed([hog].into());
    let back = drain(&mut r, all_ok);
    assert_eq!(
        back.iter()
            .filter(|s| matches!(s, Step::PublishEvent(e) if e.reason == Reason::GateNotAllowed))
            .count(),
        1,
        "{back:?}"
    );
}
