use super::*;
use crate::model::inventory::{KEY_DOCKERCONFIGJSON, SecretObject, TYPE_DOCKERCONFIGJSON};
use crate::model::pullset::{PullSetSpec, validate};
use std::time::UNIX_EPOCH;

const S: Duration = Duration::from_secs(1);
const NODE: &str = "node-a";

/// Both clocks, the wall clock following tokio's paused one from a whole minute (UTC).
struct Clock {
    start: Instant,
    wall: SystemTime,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            wall: UNIX_EPOCH + Duration::from_secs(28_333_333 * 60),
        }
    }
    fn now(&self) -> Now {
        Now {
            instant: Instant::now(),
            wall: self.wall + self.start.elapsed(),
        }
    }
}

fn config(rotation_window: Duration) -> ScheduleConfig {
    ScheduleConfig {
        node: NODE.into(),
        rotation_window,
        retry_min: 16 * S,
        retry_max: 120 * S,
        min_interval: Duration::ZERO,
    }
}

/// PullSets in `ns` by (name, YAML spec), reading secret `regcred` with `password`.
fn inventory(sets: &[(&str, &str)], password: &str) -> Inventory {
    let mut inv = Inventory::default();
    for (name, yaml) in sets {
        let spec: PullSetSpec = serde_yaml::from_str(yaml).unwrap();
        let set = validate(ObjectKey::new("ns", *name), spec).unwrap();
        inv.pullsets.insert(set.key.clone(), set);
    }
    let regcred = ObjectKey::new("ns", "regcred");
    let data = BTreeMap::from([(
        KEY_DOCKERCONFIGJSON.to_string(),
        password.as_bytes().to_vec().into(),
    )]);
    let type_ = TYPE_DOCKERCONFIGJSON.into();
    let secret = SecretObject {
        key: regcred.clone(),
        type_,
        data,
    };
    inv.secrets.insert(regcred, secret);
    inv
}

const CANARY: &str = "imagePullSecrets: [{name: regcred}]\nimages: [{image: r.io/a:1}]\ncanary: {}";

fn node() -> NodeInfo {
    NodeInfo {
        name: NODE.into(),
        labels: BTreeMap::new(),
    }
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::new("ns", name)
}

fn runs(actions: &[Action]) -> Vec<(String, Trigger)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Run { key, trigger } => Some((key.name.clone(), *trigger)),
            _ => None,
        })
        .collect()
}

/// Feeds an inventory (no gate waiting).
fn load(s: &mut CanarySchedule, inv: &Inventory, clock: &Clock) -> Vec<Action> {
    load_awaited(s, inv, &[], clock)
}

/// Feeds an inventory, the gate of a tainted node waiting for `awaited`.
fn load_awaited(
    s: &mut CanarySchedule,
    inv: &Inventory,
    awaited: &[&str],
    clock: &Clock,
) -> Vec<Action> {
    let awaited: BTreeSet<ObjectKey> = awaited.iter().map(|n| key(n)).collect();
    s.handle(
        Input::Inventory {
            inventory: inv,
            node: &node(),
            awaited: &awaited,
        },
        clock.now(),
    )
}

/// Advances paused time to the schedule's deadline and ticks.
async fn to_deadline(s: &mut CanarySchedule, clock: &Clock) -> Vec<Action> {
    let deadline = s.deadline().expect("something is scheduled");
    tokio::time::advance(deadline.saturating_duration_since(Instant::now())).await;
    s.handle(Input::Tick, clock.now())
}

fn finish(s: &mut CanarySchedule, name: &str, verdict: Verdict, clock: &Clock) -> Vec<Action> {
    s.handle(
        Input::Finished {
            key: &key(name),
            verdicts: &[("r.io/a:1".into(), verdict)],
        },
        clock.now(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_tainted_nodes_gated_start_up_canaries_run_at_once_the_others_after_their_offset() {
    let clock = Clock::new();
    let window = 10 * S;
    // Names whose offsets are not zero, so "at once" is told apart from an offset.
    let names: Vec<String> = (0..50)
        .map(|i| format!("p{i}"))
        .filter(|n| jitter::offset(NODE, &key(n), window) > S)
        .take(2)
        .collect();
    let (gated, other) = (names[0].as_str(), names[1].as_str());
    let inv = inventory(&[(gated, CANARY), (other, CANARY)], "v1");
    let mut s = CanarySchedule::new(config(window));
    load_awaited(&mut s, &inv, &[gated], &clock);
    let first = to_deadline(&mut s, &clock).await;
    assert_eq!(runs(&first), [(gated.to_string(), Trigger::Startup)]);
    assert_eq!(clock.start.elapsed(), Duration::ZERO);
    finish(&mut s, gated, Verdict::Ok, &clock);
    let next = to_deadline(&mut s, &clock).await;
    assert_eq!(runs(&next), [(other.to_string(), Trigger::Startup)]);
    assert_eq!(
        clock.start.elapsed(),
        jitter::offset(NODE, &key(other), window)
    );

    // The taint learnt after the PullSets (the Node read later): the waiting start-up canary
    // is pulled forward to now.
    let clock = Clock::new();
    let mut s = CanarySchedule::new(config(window));
    assert!(runs(&load(&mut s, &inv, &clock)).is_empty());
    tokio::time::advance(S / 2).await;
    load_awaited(&mut s, &inv, &[gated], &clock);
    let later = to_deadline(&mut s, &clock).await;
    assert_eq!(runs(&later), [(gated.to_string(), Trigger::Startup)]);
    assert_eq!(clock.start.elapsed(), S / 2);
    // Only a start-up canary is pulled forward: once it ran, a later inventory with the taint
    // queues nothing before the other's offset.
    finish(&mut s, gated, Verdict::Ok, &clock);
    load_awaited(&mut s, &inv, &[gated], &clock);
    let next = to_deadline(&mut s, &clock).await;
    assert_eq!(runs(&next), [(other.to_string(), Trigger::Startup)]);
    assert_eq!(
        clock.start.elapsed(),
        jitter::offset(NODE, &key(other), window)
    );
}

#[tokio::test(start_paused = true)]
async fn start_up_canaries_each_wait_their_offset_in_the_rotation_window_and_run_one_at_a_time() {
    let clock = Clock::new();
    let window = 10 * S;
    let mut s = CanarySchedule::new(config(window));
    let inv = inventory(
        &[
            ("a", CANARY),
            ("b", CANARY),
            ("no-canary", "images: [{image: r.io/a:1}]"),
            (
                "elsewhere",
                "nodeSelector: {pool: gpu}\nimages: [{image: r.io/a:1}]\ncanary: {}",
            ),
        ],
        "v1",
    );
    let first = load(&mut s, &inv, &clock);
    assert!(runs(&first).is_empty(), "{first:?}");
    assert!(
        !first.iter().any(|a| matches!(a, Action::Verdicts(_))),
        "verdicts wait for a run while there is something to canary"
    );
    let mut expected: Vec<(Duration, &str)> = ["a", "b"]
        .into_iter()
        .map(|n| (jitter::offset(NODE, &key(n), window), n))
        .collect();
    expected.sort();
    for (offset, name) in expected {
        let actions = to_deadline(&mut s, &clock).await;
        assert_eq!(runs(&actions), [(name.to_string(), Trigger::Startup)]);
        assert_eq!(clock.start.elapsed(), offset, "{name}");
        let done = finish(&mut s, name, Verdict::Ok, &clock);
        assert!(done.iter().any(
            |a| matches!(a, Action::Verdicts(v) if v.contains_key(&(key(name), "r.io/a:1".into())))
        ));
    }
    assert_eq!(s.deadline(), None, "nothing else to do");

    // Nothing to canary here: the (empty) verdicts are published at once.
    let mut empty = CanarySchedule::new(config(window));
    let actions = load(&mut empty, &inventory(&[], "v1"), &clock);
    assert!(
        actions.contains(&Action::Verdicts(BTreeMap::new())),
        "{actions:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cron_tick_runs_after_this_nodes_jitter_and_the_next_time_is_published() {
    let clock = Clock::new();
    let mut s = CanarySchedule::new(config(Duration::ZERO));
    let spec = "imagePullSecrets: [{name: regcred}]\nimages: [{image: r.io/a:1}]\ncanary: {schedule: '*/30 * * * * *', jitter: 8s}";
    let inv = inventory(&[("cron", spec)], "v1");
    let actions = load(&mut s, &inv, &clock);
    let offset = jitter::offset(NODE, &key("cron"), 8 * S);
    let tick = clock.wall + 30 * S;
    assert!(
        actions.contains(&Action::NextCanaries([(key("cron"), tick + offset)].into())),
        "{actions:?}"
    );
    // The start-up canary (no rotation window: at once).
    let startup = s.handle(Input::Tick, clock.now());
    assert_eq!(runs(&startup), [("cron".to_string(), Trigger::Startup)]);
    finish(&mut s, "cron", Verdict::Ok, &clock);

    // The tick: queued with this node's offset; the next tick is published.
    let at_tick = to_deadline(&mut s, &clock).await;
    assert_eq!(clock.start.elapsed(), 30 * S);
    assert!(runs(&at_tick).is_empty() || offset.is_zero());
    assert!(
        at_tick.contains(&Action::NextCanaries(
            [(key("cron"), tick + 30 * S + offset)].into()
        )),
        "{at_tick:?}"
    );
    if !offset.is_zero() {
        let run = to_deadline(&mut s, &clock).await;
        assert_eq!(runs(&run), [("cron".to_string(), Trigger::Schedule)]);
        assert_eq!(clock.start.elapsed(), 30 * S + offset);
    }
    finish(&mut s, "cron", Verdict::Ok, &clock);
    // And again at the next tick.
    let next = to_deadline(&mut s, &clock).await;
    assert_eq!(clock.start.elapsed(), 60 * S);
    assert!(
        s.next_canaries()[&key("cron")] == tick + 60 * S + offset,
        "{next:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rotation_revalidates_within_the_window_unless_on_rotation_is_off() {
    let clock = Clock::new();
    let window = 4 * S;
    let mut s = CanarySchedule::new(config(window));
    let off = "imagePullSecrets: [{name: regcred}]\nimages: [{image: r.io/a:1}]\ncanary: {onRotation: false}";
    let sets = [("on", CANARY), ("off", off)];
    load(&mut s, &inventory(&sets, "v1"), &clock);
    for _ in 0..2 {
        let run = to_deadline(&mut s, &clock).await;
        let (name, trigger) = runs(&run).remove(0);
        assert_eq!(trigger, Trigger::Startup);
        finish(&mut s, &name, Verdict::Ok, &clock);
    }
    // Unchanged credentials: nothing.
    tokio::time::advance(60 * S).await;
    load(&mut s, &inventory(&sets, "v1"), &clock);
    assert_eq!(s.deadline(), None);

    let rotated_at = Instant::now();
    load(&mut s, &inventory(&sets, "v2"), &clock);
    let run = to_deadline(&mut s, &clock).await;
    assert_eq!(runs(&run), [("on".to_string(), Trigger::Rotation)]);
    assert_eq!(
        rotated_at.elapsed(),
        jitter::offset(NODE, &key("on"), window)
    );
    finish(&mut s, "on", Verdict::Ok, &clock);
    assert_eq!(s.deadline(), None, "`off` is not re-validated");
}

#[tokio::test(start_paused = true)]
async fn a_failing_canary_is_retried_with_a_jittered_capped_backoff_until_it_succeeds() {
    let clock = Clock::new();
    let mut s = CanarySchedule::new(config(Duration::ZERO));
    load(&mut s, &inventory(&[("a", CANARY)], "v1"), &clock);
    let run = s.handle(Input::Tick, clock.now());
    assert_eq!(runs(&run), [("a".to_string(), Trigger::Startup)]);
    // Steps of 16 s doubling to the 120 s cap; each delay in [step/2, step).
    for step in [16, 32, 64, 120, 120] {
        let failed_at = Instant::now();
        let done = finish(&mut s, "a", Verdict::Unauthorized, &clock);
        assert!(done.contains(&Action::Verdicts(
            [((key("a"), "r.io/a:1".to_string()), Verdict::Unauthorized)].into()
        )));
        let retry = to_deadline(&mut s, &clock).await;
        assert_eq!(runs(&retry), [("a".to_string(), Trigger::Retry)]);
        let waited = failed_at.elapsed();
        let step = step * S;
        assert!(
            waited >= step / 2 && waited < step,
            "{waited:?} for {step:?}"
        );
    }
    finish(&mut s, "a", Verdict::Ok, &clock);
    assert_eq!(s.deadline(), None, "no retry after a success");
    // A later failure starts from the first step again.
    s.handle(Input::Manual(Some(key("a"))), clock.now());
    s.handle(Input::Tick, clock.now());
    let failed_at = Instant::now();
    finish(&mut s, "a", Verdict::Network, &clock);
    to_deadline(&mut s, &clock).await;
    assert!(failed_at.elapsed() < 16 * S);
}

#[tokio::test(start_paused = true)]
async fn manual_runs_start_at_once_and_requests_for_a_pullset_coalesce_to_the_earliest() {
    let clock = Clock::new();
    let window = 60 * S;
    let mut s = CanarySchedule::new(config(window));
    let sets = [("a", CANARY), ("b", CANARY)];
    load(&mut s, &inventory(&sets, "v1"), &clock);
    let startup_due = s.deadline().unwrap();

    // Every canaried PullSet, now, one at a time; each start-up request is absorbed.
    let actions = s.handle(Input::Manual(None), clock.now());
    assert_eq!(
        actions,
        [Action::Awaiting(key("a")), Action::Awaiting(key("b"))]
    );
    for name in ["a", "b"] {
        let run = s.handle(Input::Tick, clock.now());
        assert_eq!(runs(&run), [(name.to_string(), Trigger::Manual)]);
        finish(&mut s, name, Verdict::Ok, &clock);
    }
    assert!(startup_due > Instant::now());
    assert_eq!(
        s.deadline(),
        None,
        "the start-up requests coalesced into the manual runs"
    );

    // A later request does not postpone an earlier one; an earlier one replaces a later one.
    tokio::time::advance(5 * S).await;
    let now = Instant::now();
    s.enqueue(key("a"), Trigger::Schedule, now + 30 * S);
    s.enqueue(key("a"), Trigger::Retry, now + 40 * S);
    s.enqueue(key("a"), Trigger::Rotation, now + 2 * S);
    assert_eq!(s.deadline(), Some(now + 2 * S));
    let run = to_deadline(&mut s, &clock).await;
    assert_eq!(runs(&run), [("a".to_string(), Trigger::Rotation)]);
    finish(&mut s, "a", Verdict::Ok, &clock);
    assert_eq!(s.deadline(), None, "one run answered all three requests");

    // A PullSet not canaried here: the request is dropped, its caller's stream ends.
    let gone = s.handle(Input::Manual(Some(key("gone"))), clock.now());
    assert_eq!(gone, [Action::Awaiting(key("gone"))]);
    let tick = s.handle(Input::Tick, clock.now());
    assert_eq!(tick, [Action::Dropped(key("gone"))]);
}

#[tokio::test(start_paused = true)]
async fn pullsets_that_stop_being_canaried_here_leave_the_verdicts_and_the_schedule() {
    let clock = Clock::new();
    let mut s = CanarySchedule::new(config(Duration::ZERO));
    let spec = "imagePullSecrets: [{name: regcred}]\nimages: [{image: r.io/a:1}]\ncanary: {schedule: '0 * * * *'}";
    load(
        &mut s,
        &inventory(&[("a", spec), ("b", CANARY)], "v1"),
        &clock,
    );
    for _ in 0..2 {
        let run = s.handle(Input::Tick, clock.now());
        let (name, _) = runs(&run).remove(0);
        finish(&mut s, &name, Verdict::Ok, &clock);
    }
    assert_eq!(s.next_canaries().len(), 1);
    let actions = load(&mut s, &inventory(&[("b", CANARY)], "v1"), &clock);
    assert!(actions.contains(&Action::Verdicts(
        [((key("b"), "r.io/a:1".to_string()), Verdict::Ok)].into()
    )));
    assert!(actions.contains(&Action::NextCanaries(BTreeMap::new())));
    // A PullSet that appears later gets its start-up canary.
    load(
        &mut s,
        &inventory(&[("b", CANARY), ("c", CANARY)], "v1"),
        &clock,
    );
    let run = s.handle(Input::Tick, clock.now());
    assert_eq!(runs(&run), [("c".to_string(), Trigger::Startup)]);
}

/// `inventory`, with each PullSet's `spec.canary.jitter` then set to `jitter` unvalidated, as a
/// path that skipped validation would hand it over.
fn with_jitter(sets: &[(&str, &str)], jitter: &str) -> Inventory {
    let mut inv = inventory(sets, "v1");
    for set in inv.pullsets.values_mut() {
        if let Some(canary) = set.spec.canary.as_mut() {
            canary.jitter = Some(jitter.into());
        }
    }
    inv
}

const TEN_THOUSAND_YEARS: &str = "10000years";

#[tokio::test(start_paused = true)]
async fn a_jitter_beyond_the_bound_never_panics_and_spreads_over_at_most_a_day() {
    // The longest humantime reads, about `Duration::MAX`.
    for jitter in [TEN_THOUSAND_YEARS, "18446744073709551615s"] {
        let window = humantime::parse_duration(jitter).unwrap();
        assert!(window > MAX_DELAY, "{jitter}");
        let clock = Clock::new();
        let mut s = CanarySchedule::new(config(Duration::ZERO));
        // Daily at midnight UTC: the offset, under a day, runs before the next tick.
        let spec = "imagePullSecrets: [{name: regcred}]\nimages: [{image: r.io/a:1}]\ncanary: {schedule: '0 0 * * *'}";
        let actions = load(&mut s, &with_jitter(&[("cron", spec)], jitter), &clock);
        let offset = jitter::offset(NODE, &key("cron"), MAX_CANARY_JITTER);
        assert!(offset < MAX_CANARY_JITTER);
        let since_midnight = clock.wall.duration_since(UNIX_EPOCH).unwrap().as_secs() % 86_400;
        let to_tick = Duration::from_secs(86_400 - since_midnight);
        let tick = clock.wall + to_tick;
        assert!(
            actions.contains(&Action::NextCanaries([(key("cron"), tick + offset)].into())),
            "{jitter}: {actions:?}"
        );
        let startup = s.handle(Input::Tick, clock.now());
        assert_eq!(runs(&startup), [("cron".to_string(), Trigger::Startup)]);
        finish(&mut s, "cron", Verdict::Ok, &clock);

        // The tick queues the run at this node's offset in the clamped window, and it runs then.
        to_deadline(&mut s, &clock).await;
        assert_eq!(clock.start.elapsed(), to_tick, "{jitter}");
        let run = to_deadline(&mut s, &clock).await;
        assert_eq!(runs(&run), [("cron".to_string(), Trigger::Schedule)]);
        assert_eq!(clock.start.elapsed(), to_tick + offset, "{jitter}");
    }
}

#[tokio::test(start_paused = true)]
async fn delays_beyond_any_bound_in_the_config_never_panic_and_wait_at_most_max_delay() {
    let clock = Clock::new();
    let mut s = CanarySchedule::new(ScheduleConfig {
        node: NODE.into(),
        rotation_window: Duration::MAX,
        retry_min: Duration::MAX,
        retry_max: Duration::MAX,
        min_interval: Duration::MAX,
    });
    load(&mut s, &inventory(&[("a", CANARY)], "v1"), &clock);
    let offset = jitter::offset(NODE, &key("a"), MAX_DELAY);
    assert_eq!(s.deadline(), Some(clock.start + offset));
    let run = to_deadline(&mut s, &clock).await;
    assert_eq!(runs(&run), [("a".to_string(), Trigger::Startup)]);

    // A failure: the retry waits at most the clamp, and runs.
    let failed_at = Instant::now();
    finish(&mut s, "a", Verdict::Unauthorized, &clock);
    let due = s.deadline().expect("a retry is queued");
    assert!(due > failed_at && due <= failed_at + MAX_DELAY, "{due:?}");
    let retry = to_deadline(&mut s, &clock).await;
    assert_eq!(runs(&retry), [("a".to_string(), Trigger::Retry)]);
    finish(&mut s, "a", Verdict::Ok, &clock);

    // A rotation: this node's offset in the clamped window, but the floor after the retry that
    // just ran comes later: the floor clamped to MAX_DELAY.
    let rotated_at = Instant::now();
    load(&mut s, &inventory(&[("a", CANARY)], "v2"), &clock);
    assert!(offset < MAX_DELAY);
    assert_eq!(s.deadline(), Some(rotated_at + MAX_DELAY));
    let run = to_deadline(&mut s, &clock).await;
    assert_eq!(runs(&run), [("a".to_string(), Trigger::Rotation)]);
}

#[tokio::test(start_paused = true)]
async fn a_cron_tick_beyond_max_delay_is_looked_at_again_and_runs_on_time() {
    // 2024-03-01T00:00:00Z: the next 29 February is four years away.
    let clock = Clock {
        start: Instant::now(),
        wall: UNIX_EPOCH + Duration::from_secs(1_709_251_200),
    };
    let tick = UNIX_EPOCH + Duration::from_secs(1_835_395_200); // 2028-02-29T00:00:00Z
    let mut s = CanarySchedule::new(config(Duration::ZERO));
    let spec = "imagePullSecrets: [{name: regcred}]\nimages: [{image: r.io/a:1}]\ncanary: {schedule: '0 0 29 2 *'}";
    load(&mut s, &inventory(&[("leap", spec)], "v1"), &clock);
    let startup = s.handle(Input::Tick, clock.now());
    assert_eq!(runs(&startup), [("leap".to_string(), Trigger::Startup)]);
    finish(&mut s, "leap", Verdict::Ok, &clock);

    let wait = tick.duration_since(clock.wall).unwrap();
    let mut looks = 0;
    loop {
        let now = Instant::now();
        let due = s.deadline().expect("the cron is scheduled");
        assert!(due <= now + MAX_DELAY, "never further than the clamp");
        assert_eq!(s.next_canaries()[&key("leap")], tick);
        let actions = to_deadline(&mut s, &clock).await;
        if clock.start.elapsed() < wait {
            assert!(runs(&actions).is_empty(), "early: {actions:?}");
            looks += 1;
            continue;
        }
        assert_eq!(clock.start.elapsed(), wait, "on time");
        assert_eq!(runs(&actions), [("leap".to_string(), Trigger::Schedule)]);
        break;
    }
    assert_eq!(looks, 3, "once a year until the tick is within one");
}

#[tokio::test(start_paused = true)]
async fn an_image_removed_from_its_pullset_takes_its_verdict_with_it() {
    let clock = Clock::new();
    let mut s = CanarySchedule::new(config(Duration::ZERO));
    let two = "imagePullSecrets: [{name: regcred}]\nimages: [{image: r.io/a:1}, {image: r.io/b:1}]\ncanary: {}";
    load(&mut s, &inventory(&[("a", two)], "v1"), &clock);
    to_deadline(&mut s, &clock).await;
    s.handle(
        Input::Finished {
            key: &key("a"),
            verdicts: &[
                ("r.io/a:1".into(), Verdict::Ok),
                ("r.io/b:1".into(), Verdict::Unauthorized),
            ],
        },
        clock.now(),
    );
    // The failing image leaves the PullSet: its Unauthorized must not stay among the verdicts.
    let actions = load(&mut s, &inventory(&[("a", CANARY)], "v1"), &clock);
    let expected = BTreeMap::from([((key("a"), "r.io/a:1".to_string()), Verdict::Ok)]);
    assert!(actions.contains(&Action::Verdicts(expected)), "{actions:?}");
}

/// Five minutes, the default `--min-canary-interval`.
const FLOOR: Duration = Duration::from_secs(300);

fn floored(rotation_window: Duration) -> ScheduleConfig {
    ScheduleConfig {
        min_interval: FLOOR,
        ..config(rotation_window)
    }
}

/// PullSets by (namespace, name, YAML spec), each reading `regcred` of its namespace; the
/// Secrets by (namespace, password).
fn inventory_in(sets: &[(&str, String, &str)], passwords: &[(&str, &str)]) -> Inventory {
    let mut inv = Inventory::default();
    for (ns, name, yaml) in sets {
        let spec: PullSetSpec = serde_yaml::from_str(yaml).unwrap();
        let set = validate(ObjectKey::new(*ns, name.clone()), spec).unwrap();
        inv.pullsets.insert(set.key.clone(), set);
    }
    for (ns, password) in passwords {
        let regcred = ObjectKey::new(*ns, "regcred");
        let data = BTreeMap::from([(
            KEY_DOCKERCONFIGJSON.to_string(),
            password.as_bytes().to_vec().into(),
        )]);
        let secret = SecretObject {
            key: regcred.clone(),
            type_: TYPE_DOCKERCONFIGJSON.into(),
            data,
        };
        inv.secrets.insert(regcred, secret);
    }
    inv
}

#[tokio::test(start_paused = true)]
async fn a_schedule_firing_more_often_than_the_floor_is_refused_naming_the_pullset_and_field() {
    let clock = Clock::new();
    // (schedule, followed under a 5 min floor)
    for (schedule, followed) in [
        ("* * * * * *", false),
        ("*/30 * * * * *", false),
        ("* * * * *", false),
        ("*/4 * * * *", false),
        ("*/5 * * * *", true),
        ("0 */6 * * *", true),
    ] {
        let mut s = CanarySchedule::new(floored(Duration::ZERO));
        let spec = format!(
            "imagePullSecrets: [{{name: regcred}}]\nimages: [{{image: r.io/a:1}}]\ncanary: {{schedule: '{schedule}'}}"
        );
        load(&mut s, &inventory(&[("cron", &spec)], "v1"), &clock);
        assert_eq!(
            s.next_canaries().contains_key(&key("cron")),
            followed,
            "{schedule}"
        );
    }
    let error = ScheduleError::TooFrequent {
        pullset: key("cron"),
        schedule: "* * * * * *".into(),
        every: S,
        floor: FLOOR,
    };
    assert_eq!(
        error.to_string(),
        "PullSet ns/cron: spec.canary.schedule `* * * * * *` fires every 1s, more often than pullgate run --min-canary-interval 5m: refused, its scheduled canaries do not run (rotation, retries and manual runs still do)"
    );
    // Without a floor, a per-second schedule is followed (the tests' own setting).
    let mut s = CanarySchedule::new(config(Duration::ZERO));
    let spec = "imagePullSecrets: [{name: regcred}]\nimages: [{image: r.io/a:1}]\ncanary: {schedule: '* * * * * *'}";
    load(&mut s, &inventory(&[("cron", spec)], "v1"), &clock);
    assert!(s.next_canaries().contains_key(&key("cron")));
}

#[tokio::test(start_paused = true)]
async fn a_secret_rewritten_every_ten_seconds_costs_one_canary_per_floor_the_first_at_once() {
    let clock = Clock::new();
    let mut s = CanarySchedule::new(floored(Duration::ZERO));
    load(&mut s, &inventory(&[("a", CANARY)], "v0"), &clock);
    let startup = s.handle(Input::Tick, clock.now());
    assert_eq!(runs(&startup), [("a".to_string(), Trigger::Startup)]);
    finish(&mut s, "a", Verdict::Ok, &clock);

    // A quiet floor, then a rotation every 10 s for 15 minutes.
    tokio::time::advance(FLOOR + S).await;
    let mut started = Vec::new();
    for i in 1..=90 {
        let mut actions = load(
            &mut s,
            &inventory(&[("a", CANARY)], &format!("v{i}")),
            &clock,
        );
        actions.extend(s.handle(Input::Tick, clock.now()));
        for (_, trigger) in runs(&actions) {
            started.push((clock.start.elapsed(), trigger));
            finish(&mut s, "a", Verdict::Ok, &clock);
        }
        tokio::time::advance(10 * S).await;
    }
    let first = FLOOR + S;
    assert_eq!(
        started,
        [
            (first, Trigger::Rotation),
            (first + FLOOR, Trigger::Rotation),
            (first + 2 * FLOOR, Trigger::Rotation),
        ],
        "the first at once, then one per floor"
    );
    // A failure's retry waits the floor too.
    let mut s = CanarySchedule::new(floored(Duration::ZERO));
    load(&mut s, &inventory(&[("a", CANARY)], "v0"), &clock);
    s.handle(Input::Tick, clock.now());
    let failed_at = clock.start.elapsed();
    finish(&mut s, "a", Verdict::Unauthorized, &clock);
    let retry = to_deadline(&mut s, &clock).await;
    assert_eq!(runs(&retry), [("a".to_string(), Trigger::Retry)]);
    assert_eq!(clock.start.elapsed() - failed_at, FLOOR);
    // A manual run does not wait.
    finish(&mut s, "a", Verdict::Ok, &clock);
    s.handle(Input::Manual(Some(key("a"))), clock.now());
    let manual = s.handle(Input::Tick, clock.now());
    assert_eq!(runs(&manual), [("a".to_string(), Trigger::Manual)]);
}

#[tokio::test(start_paused = true)]
async fn a_namespace_with_fifty_due_canaries_does_not_starve_anothers_rotation() {
    let clock = Clock::new();
    let mut s = CanarySchedule::new(floored(Duration::ZERO));
    let beta = ("beta", "b".to_string(), CANARY);
    load(
        &mut s,
        &inventory_in(std::slice::from_ref(&beta), &[("beta", "v0")]),
        &clock,
    );
    assert_eq!(runs(&s.handle(Input::Tick, clock.now())).len(), 1);
    s.handle(
        Input::Finished {
            key: &ObjectKey::new("beta", "b"),
            verdicts: &[("r.io/a:1".into(), Verdict::Ok)],
        },
        clock.now(),
    );
    tokio::time::advance(FLOOR + S).await;

    // Fifty new PullSets in alpha (start-up canaries, all due now) as beta's Secret rotates.
    let mut sets: Vec<(&str, String, &str)> = (0..50)
        .map(|i| ("alpha", format!("a{i:02}"), CANARY))
        .collect();
    sets.push(beta);
    load(
        &mut s,
        &inventory_in(&sets, &[("alpha", "v0"), ("beta", "v1")]),
        &clock,
    );
    let mut order = Vec::new();
    loop {
        let actions = s.handle(Input::Tick, clock.now());
        let Some(Action::Run { key, trigger }) = actions
            .into_iter()
            .find(|a| matches!(a, Action::Run { .. }))
        else {
            break;
        };
        s.handle(
            Input::Finished {
                key: &key,
                verdicts: &[("r.io/a:1".into(), Verdict::Ok)],
            },
            clock.now(),
        );
        order.push((key, trigger));
        assert!(order.len() <= 51, "{order:?}");
    }
    assert_eq!(order.len(), 51);
    let beta_at = order
        .iter()
        .position(|(k, _)| k.namespace == "beta")
        .unwrap();
    assert_eq!(beta_at, 1, "after at most one of alpha's: {order:?}");
    assert_eq!(order[beta_at].1, Trigger::Rotation);
    // Alpha's own, earliest first (name order for equal times).
    let alpha: Vec<&str> = order
        .iter()
        .filter(|(k, _)| k.namespace == "alpha")
        .map(|(k, _)| k.name.as_str())
        .collect();
    let mut sorted = alpha.clone();
    sorted.sort_unstable();
    assert_eq!(alpha, sorted);
}
