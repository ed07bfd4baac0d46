use super::*;

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const C1: &str = "sha256:c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1";
const C2: &str = "sha256:c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2c2";

/// Record flags: `p` pinned, `o` ours.
fn rec(name: &str, target: &str, flags: &str) -> ImageRecord {
    ImageRecord {
        name: name.into(),
        target: target.into(),
        pinned: flags.contains('p'),
        ours: flags.contains('o'),
    }
}

/// The three records containerd's CRI makes for `reg.test/app:v1` (tag, repo digest, id).
fn app(flags: [&str; 3]) -> Vec<ImageRecord> {
    vec![
        rec("reg.test/app:v1", D1, flags[0]),
        rec(&format!("reg.test/app@{D1}"), D1, flags[1]),
        rec(C1, D1, flags[2]),
    ]
}

fn other(flags: [&str; 2]) -> Vec<ImageRecord> {
    vec![
        rec("reg.test/other:v2", D2, flags[0]),
        rec(C2, D2, flags[1]),
    ]
}

fn img(s: &str) -> ImageRef {
    ImageRef::parse(s).expect("a valid test reference")
}

fn pin(n: &str) -> PinAction {
    PinAction::Pin(n.into())
}

fn unpin(n: &str) -> PinAction {
    PinAction::Unpin(n.into())
}

#[test]
fn the_plan_pins_every_reference_and_unpins_only_its_own() {
    let app_digest = format!("reg.test/app@{D1}");
    let app_tag_digest = format!("reg.test/app:v1@{D1}");
    let refused = "PinRefused: low";
    #[allow(clippy::type_complexity)]
    let cases: Vec<(
        &str,
        Vec<&str>,
        Vec<ImageRecord>,
        Option<&str>,
        Vec<PinAction>,
        Vec<(&str, PinState)>,
    )> = vec![
        (
            "a wanted image none pins: every reference pinned",
            vec!["reg.test/app:v1"],
            app(["", "", ""]),
            None,
            vec![pin(&app_digest), pin("reg.test/app:v1"), pin(C1)],
            vec![("reg.test/app:v1", PinState::Pinned)],
        ),
        (
            "wanted by digest: the tag and id records of the same target too",
            vec![&app_digest],
            app(["", "", ""]),
            None,
            vec![pin(&app_digest), pin("reg.test/app:v1"), pin(C1)],
            vec![(&app_digest, PinState::Pinned)],
        ),
        (
            "tag and digest: found by its digest, as the CRI stores it",
            vec![&app_tag_digest],
            app(["", "", ""]),
            None,
            vec![pin(&app_digest), pin("reg.test/app:v1"), pin(C1)],
            vec![(&app_tag_digest, PinState::Pinned)],
        ),
        (
            "already pinned by the agent: nothing to do",
            vec!["reg.test/app:v1"],
            app(["po", "po", "po"]),
            None,
            vec![],
            vec![("reg.test/app:v1", PinState::Pinned)],
        ),
        (
            "one reference lost its pin: it alone is pinned again",
            vec!["reg.test/app:v1"],
            app(["po", "o", "po"]),
            None,
            vec![pin(&app_digest)],
            vec![("reg.test/app:v1", PinState::Pinned)],
        ),
        (
            "no PullSet wants it: the agent's pins taken back",
            vec![],
            app(["po", "po", "po"]),
            None,
            vec![unpin(&app_digest), unpin("reg.test/app:v1"), unpin(C1)],
            vec![],
        ),
        (
            "another tool's pin, unwanted: untouched",
            vec![],
            app(["p", "p", ""]),
            None,
            vec![],
            vec![],
        ),
        (
            "another tool's pin, wanted: the rest pinned, theirs not marked ours",
            vec!["reg.test/app:v1"],
            app(["p", "", ""]),
            None,
            vec![pin(&app_digest), pin(C1)],
            vec![("reg.test/app:v1", PinState::Pinned)],
        ),
        (
            "a mixed image no longer wanted: only the agent's references unpinned",
            vec![],
            app(["p", "po", "po"]),
            None,
            vec![unpin(&app_digest), unpin(C1)],
            vec![],
        ),
        (
            "the agent's label without the pin (unpinned by someone): the label taken back",
            vec![],
            app(["o", "", ""]),
            None,
            vec![unpin("reg.test/app:v1")],
            vec![],
        ),
        (
            "one image kept, another taken back",
            vec!["reg.test/app:v1"],
            [app(["po", "po", "po"]), other(["po", "po"])].concat(),
            None,
            vec![unpin("reg.test/other:v2"), unpin(C2)],
            vec![("reg.test/app:v1", PinState::Pinned)],
        ),
        (
            "a tag that moved: the new image pinned, the old one's own pins taken back",
            vec!["reg.test/app:v1"],
            vec![
                rec("reg.test/app:v1", D2, "po"),
                rec(C2, D2, ""),
                rec(&format!("reg.test/app@{D1}"), D1, "po"),
                rec(C1, D1, "po"),
            ],
            None,
            vec![pin(C2), unpin(&app_digest), unpin(C1)],
            vec![("reg.test/app:v1", PinState::Pinned)],
        ),
        (
            "wanted twice (two PullSets, two spellings): pinned once",
            vec!["reg.test/app:v1", &app_digest],
            app(["", "", ""]),
            None,
            vec![pin(&app_digest), pin("reg.test/app:v1"), pin(C1)],
            vec![
                ("reg.test/app:v1", PinState::Pinned),
                (&app_digest, PinState::Pinned),
            ],
        ),
        (
            "not in the store: absent, nothing done",
            vec!["reg.test/app:v9"],
            app(["", "", ""]),
            None,
            vec![],
            vec![("reg.test/app:v9", PinState::Absent)],
        ),
        (
            "below the headroom: a new pin refused",
            vec!["reg.test/app:v1"],
            app(["", "", ""]),
            Some(refused),
            vec![],
            vec![("reg.test/app:v1", PinState::Refused(refused.into()))],
        ),
        (
            "below the headroom: a pin held is kept (and completed)",
            vec!["reg.test/app:v1"],
            app(["po", "", "po"]),
            Some(refused),
            vec![pin(&app_digest)],
            vec![("reg.test/app:v1", PinState::Pinned)],
        ),
        (
            "below the headroom: unwanted pins still taken back",
            vec![],
            app(["po", "po", "po"]),
            Some(refused),
            vec![unpin(&app_digest), unpin("reg.test/app:v1"), unpin(C1)],
            vec![],
        ),
    ];
    for (name, wanted, records, refusal, actions, states) in cases {
        let wanted: Vec<ImageRef> = wanted.into_iter().map(img).collect();
        let got = plan(&wanted, &records, refusal);
        let mut want_actions = actions;
        want_actions.sort();
        assert_eq!(got.actions, want_actions, "{name}: actions");
        let want_states: BTreeMap<String, PinState> = states
            .into_iter()
            .map(|(r, s)| (img(r).pull_reference(), s))
            .collect();
        assert_eq!(got.images, want_states, "{name}: states");
    }
}

#[test]
fn an_unpin_is_only_ever_planned_for_a_record_the_agent_marked() {
    // Every combination of flags over two images, wanted or not: no Unpin of a record without
    // the agent's label, whatever else holds.
    let flags = ["", "p", "o", "po"];
    for a in flags {
        for b in flags {
            for c in flags {
                for wanted in [vec![], vec![img("reg.test/app:v1")]] {
                    let records = [app([a, b, c]), other([b, a])].concat();
                    for refusal in [None, Some("low")] {
                        let got = plan(&wanted, &records, refusal);
                        for action in &got.actions {
                            if let PinAction::Unpin(name) = action {
                                let r = records.iter().find(|r| &r.name == name);
                                assert!(
                                    r.is_some_and(|r| r.ours),
                                    "{a}/{b}/{c} wanted {wanted:?}: unpins {name}, not the agent's"
                                );
                            }
                            if let PinAction::Pin(name) = action {
                                assert!(
                                    !got.actions.contains(&PinAction::Unpin(name.clone())),
                                    "{name} both pinned and unpinned"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn support_by_runtime_and_release() {
    let cases = [
        ("containerd", "v1.7.24", true),
        ("containerd", "1.7.24~ds1", true),
        ("containerd", "2.1.9", true),
        ("containerd", "v2.0.0", true),
        ("containerd", "1.7.3", true),
        ("containerd", "1.7.2", false),
        ("containerd", "1.7.0-rc.1", false),
        ("containerd", "1.6.20~ds1", false),
        ("containerd", "v1.6.21", false),
        ("containerd", "1.6.22", true),
        ("containerd", "1.6.39", true),
        ("containerd", "1.5.18", false),
        ("containerd", "unknown", true),
        ("cri-o", "1.33.0", false),
        ("docker", "28.0.0", false),
    ];
    for (name, version, supported) in cases {
        let got = support(name, version);
        assert_eq!(
            got == PinSupport::Supported,
            supported,
            "{name} {version}: {got:?}"
        );
        if let PinSupport::Unsupported(why) = got {
            assert!(
                why.contains(name) || why.contains(version),
                "{name} {version}: the warning names the runtime: {why}"
            );
        }
    }
}

#[test]
fn a_new_pin_is_refused_at_or_below_the_headroom_only() {
    let space = |free, capacity| {
        Some(ImageFsSpace {
            free_bytes: free,
            capacity_bytes: capacity,
        })
    };
    let ten_percent: MinFreeDisk = "10%".parse().expect("a valid headroom");
    let off: MinFreeDisk = "0".parse().expect("a valid headroom");
    let cases = [
        (ten_percent, space(5, 100), true),
        (ten_percent, space(10, 100), true),
        (ten_percent, space(11, 100), false),
        (ten_percent, None, false),
        (off, space(0, 100), false),
    ];
    for (headroom, space, refused) in cases {
        let got = refusal(headroom, space);
        assert_eq!(got.is_some(), refused, "{headroom} {space:?}: {got:?}");
        if let Some(message) = got {
            assert!(
                message.starts_with("PinRefused") && message.contains("--min-free-disk"),
                "names the headroom: {message}"
            );
        }
    }
}

#[test]
fn the_warnings_name_the_namespace_the_flag_and_why() {
    let allowed = GateNamespaces::only(["kube-system"]);
    let w = not_allowed_warning("team", &allowed);
    assert!(
        w.contains("team") && w.contains("--pin-namespaces") && w.contains("kube-system"),
        "{w}"
    );
    assert_eq!(not_pinned_warning(&PinState::Pinned), None);
    assert!(not_pinned_warning(&PinState::Absent).is_some_and(|w| w.contains("not pinned")));
    assert_eq!(
        not_pinned_warning(&PinState::Refused("PinRefused: x".into())),
        Some("PinRefused: x".into())
    );
}

#[test]
fn every_pin_warning_is_known_as_one_and_no_other_is() {
    let ten_percent: MinFreeDisk = "10%".parse().expect("a valid headroom");
    let low = Some(ImageFsSpace {
        free_bytes: 1,
        capacity_bytes: 100,
    });
    let refused = refusal(ten_percent, low).expect("refused at 1% free");
    let ours = [
        not_allowed_warning("team", &GateNamespaces::only(["kube-system"])),
        not_pinned_warning(&PinState::Absent).expect("a warning"),
        not_pinned_warning(&PinState::Refused(refused.clone())).expect("a warning"),
        refused,
    ];
    for w in &ours {
        assert!(is_pin_warning(w), "{w}");
    }
    for other in [
        "NotDownloaded: the canary fetched no blob",
        "the image is pinned elsewhere: not pinned: quoted",
        "",
    ] {
        assert!(!is_pin_warning(other), "{other}");
    }
}

#[test]
fn pinned_when_any_reference_of_its_target_is() {
    let cases = [
        ("reg.test/app:v1", app(["", "", ""]), false),
        ("reg.test/app:v1", app(["", "", "p"]), true),
        ("reg.test/app:v1", app(["p", "", ""]), true),
        ("reg.test/app:v1", app(["o", "o", "o"]), false),
        (
            "reg.test/other:v2",
            [app(["p", "p", "p"]), other(["", ""])].concat(),
            false,
        ),
        ("reg.test/app:v9", app(["p", "p", "p"]), false),
    ];
    for (image, records, pinned) in cases {
        assert_eq!(
            is_pinned(&img(image), &records),
            pinned,
            "{image} {records:?}"
        );
    }
}
