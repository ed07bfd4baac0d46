//! Prometheus metrics (`prometheus-client`), served as text on `--metrics-addr` `/metrics`.
//!
//! Every name starts with `pullgate_`. Labels carry names only — registry host, namespace,
//! PullSet, verdict, the credential's *source* (`secret ns/name`) — never secret material.

use crate::decide::canary::runner::CanaryOutcome;
use crate::decide::conditions::{Condition, Status};
use crate::decide::retry::ApiErrorKind;
use crate::model::inventory::ObjectKey;
use crate::model::outcome::{Action, Outcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub registry: String,
    pub namespace: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    pub registry: String,
    pub namespace: String,
    pub verdict: String,
    pub path: String,
}

/// The latest verdict of a PullSet's images, per path: what is failing *now* (the outcome counters
/// say what happened, and a canary that runs every few hours moves them too rarely to alert on).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatestCanaryLabels {
    pub namespace: String,
    pub pullset: String,
    pub registry: String,
    pub path: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    pub registry: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExpiryLabels {
    pub namespace: String,
    pub pullset: String,
    pub registry: String,
    /// Where the credential came from (`secret ns/name key K`), never its value.
    pub credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub condition: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiErrorLabels {
    /// `403`, `404`, `409`, `410`, `429`, `5xx`, `other` or `transport` (`ApiErrorKind::label`).
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MountpointLabels {
    /// The image filesystem's mountpoint as the runtime reports it (printable, bounded).
    pub mountpoint: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
    ])
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    prepull_duration: HistogramFamily<OutcomeLabels>,
    prepull_outcomes: Family<OutcomeLabels, Counter>,
    images_pulled: Family<RegistryLabels, Counter>,
    bytes_pulled: Family<RegistryLabels, Counter>,
    canary_duration: HistogramFamily<CanaryLabels>,
    canary_outcomes: Family<CanaryLabels, Counter>,
    canary_bytes: Family<RegistryLabels, Counter>,
    canary_images: Family<LatestCanaryLabels, Gauge>,
    credential_expiry: Family<ExpiryLabels, Gauge<f64, AtomicU64>>,
    condition: Family<ConditionLabels, Gauge>,
    cri_reconnects: Counter,
    apiserver_errors: Family<ApiErrorLabels, Counter>,
    events: Family<ReasonLabels, Counter>,
    events_dropped: Counter,
    image_fs_free: Family<MountpointLabels, Gauge>,
    image_fs_capacity: Family<MountpointLabels, Gauge>,
    image_fs_readable: Family<MountpointLabels, Gauge>,
    pinned_images: Gauge,
    pinned_image_bytes: Gauge,
    /// The label sets created per namespace and per PullSet image, so that the series of what is
    /// gone can be removed ([`Metrics::retain`]).
    series: Mutex<Series>,
}

/// What the families hold that belongs to a namespace or a PullSet image.
#[derive(Default)]
struct Series {
    outcomes: HashSet<OutcomeLabels>,
    canaries: HashSet<CanaryLabels>,
    /// The expiry series each PullSet image last set.
    expiry: HashMap<(ObjectKey, String), ExpiryLabels>,
    /// The image filesystem the gauges describe (the last one read).
    image_fs: Option<MountpointLabels>,
    /// The latest canary of each PullSet image on each path: (registry, verdict).
    latest: HashMap<(ObjectKey, String, &'static str), (String, String)>,
    /// The `canary_images` series each PullSet has set, so that a count down to zero is removed.
    latest_series: HashMap<ObjectKey, HashSet<LatestCanaryLabels>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pullgate");
        let r = &mut registry;
        Self {
            prepull_duration: registered(
                r,
                "prepull_duration_seconds",
                "Time to make one image present (ImageStatus + PullImage), by registry, namespace and verdict",
                Family::new_with_constructor(duration_histogram),
            ),
            prepull_outcomes: registered(
                r,
                "prepull_outcomes",
                "Pre-pull outcomes (one per image per PullSet per pass), by verdict",
                Family::default(),
            ),
            images_pulled: registered(
                r,
                "images_pulled",
                "Images pulled by the pre-pull (absent before)",
                Family::default(),
            ),
            bytes_pulled: registered(
                r,
                "pulled_bytes",
                "Bytes of the images the pre-pull pulled (their size as the runtime reports it)",
                Family::default(),
            ),
            canary_duration: registered(
                r,
                "canary_duration_seconds",
                "Time of one canary check, by registry, namespace, verdict and path",
                Family::new_with_constructor(duration_histogram),
            ),
            canary_outcomes: registered(
                r,
                "canary_outcomes",
                "Canary outcomes, by verdict and path (registry or runtime)",
                Family::default(),
            ),
            canary_bytes: registered(
                r,
                "canary_bytes",
                "Bytes canaries fetched and verified",
                Family::default(),
            ),
            canary_images: registered(
                r,
                "canary_images",
                "PullSet images by the verdict of their latest canary, per path (registry or runtime): a series with a verdict other than Ok is failing now",
                Family::default(),
            ),
            credential_expiry: registered(
                r,
                "credential_expiry_timestamp_seconds",
                "When the credential that worked says it expires (Unix time), by its source",
                Family::default(),
            ),
            condition: registered(
                r,
                "node_condition",
                "1 for the current status of each of pullgate's node conditions, 0 for the others",
                Family::default(),
            ),
            cri_reconnects: registered(
                r,
                "cri_reconnects",
                "Times the CRI connection was re-established",
                Counter::default(),
            ),
            apiserver_errors: registered(
                r,
                "apiserver_errors",
                "Failed API-server requests and broken watches, by kind: the status (403, 404, 409, 410, 429, 5xx, other) or transport",
                Family::default(),
            ),
            events: registered(
                r,
                "events",
                "Events sent to the API server, by reason",
                Family::default(),
            ),
            events_dropped: registered(
                r,
                "events_dropped",
                "Events not sent: over the per-node budget, or queued too long while the API server was away",
                Counter::default(),
            ),
            image_fs_free: registered(
                r,
                "image_fs_free_bytes",
                "Free bytes of the runtime's image filesystem (statvfs f_bavail), as last read (once a pre-pull pass and before each download); absent while it cannot be read",
                Family::default(),
            ),
            image_fs_capacity: registered(
                r,
                "image_fs_capacity_bytes",
                "Size in bytes of the runtime's image filesystem, as last read; absent while it cannot be read",
                Family::default(),
            ),
            image_fs_readable: registered(
                r,
                "image_fs_readable",
                "1 when the image filesystem could be read at its last look, 0 when not (--min-free-disk is then not enforced: see --host-root)",
                Family::default(),
            ),
            pinned_images: registered(
                r,
                "pinned_images",
                "Images pullgate pinned (spec.pin: true) at its last reconciliation; another tool's pins are not counted",
                Gauge::default(),
            ),
            pinned_image_bytes: registered(
                r,
                "pinned_image_bytes",
                "Bytes of the images pullgate pinned, as the runtime reports their sizes: space the kubelet's image GC never reclaims, within the image filesystem the --min-free-disk headroom is kept on",
                Gauge::default(),
            ),
            registry,
            series: Mutex::default(),
        }
    }

    fn series(&self) -> std::sync::MutexGuard<'_, Series> {
        self.series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Removes every series of what is gone: the expiry gauge of each PullSet image not in
    /// `live`, and the outcome counters and histograms of namespaces with no PullSet image in
    /// `live`. Nothing stale stays exported (a gauge of a deleted PullSet would be believed).
    pub fn retain(&self, live: &BTreeSet<(ObjectKey, String)>) {
        let namespaces: HashSet<&str> = live.iter().map(|(k, _)| k.namespace.as_str()).collect();
        let mut series = self.series();
        series.outcomes.retain(|labels| {
            let keep = namespaces.contains(labels.namespace.as_str());
            if !keep {
                self.prepull_outcomes.remove(labels);
                self.prepull_duration.remove(labels);
            }
            keep
        });
        series.canaries.retain(|labels| {
            let keep = namespaces.contains(labels.namespace.as_str());
            if !keep {
                self.canary_outcomes.remove(labels);
                self.canary_duration.remove(labels);
            }
            keep
        });
        let gone: Vec<(ObjectKey, String)> = series
            .expiry
            .keys()
            .filter(|slot| !live.contains(*slot))
            .cloned()
            .collect();
        for slot in gone {
            self.forget_expiry(&mut series, &slot);
        }
        let mut touched = BTreeSet::new();
        series.latest.retain(|(key, image, _), _| {
            let keep = live.contains(&(key.clone(), image.clone()));
            if !keep {
                touched.insert(key.clone());
            }
            keep
        });
        for key in touched {
            self.count_latest(&mut series, &key);
        }
    }

    /// Sets `canary_images` of PullSet `key` from the latest verdicts of its images; a label set
    /// no image has any more is removed (never a stale count).
    fn count_latest(&self, series: &mut Series, key: &ObjectKey) {
        let mut counts: HashMap<LatestCanaryLabels, i64> = HashMap::new();
        for ((k, _, path), (registry, verdict)) in &series.latest {
            if k == key {
                let labels = LatestCanaryLabels {
                    namespace: key.namespace.clone(),
                    pullset: key.name.clone(),
                    registry: registry.clone(),
                    path: (*path).into(),
                    verdict: verdict.clone(),
                };
                *counts.entry(labels).or_default() += 1;
            }
        }
        let old = series.latest_series.remove(key).unwrap_or_default();
        for labels in old.iter().filter(|l| !counts.contains_key(*l)) {
            self.canary_images.remove(labels);
        }
        for (labels, n) in &counts {
            self.canary_images.get_or_create(labels).set(*n);
        }
        if !counts.is_empty() {
            series
                .latest_series
                .insert(key.clone(), counts.into_keys().collect());
        }
    }

    /// Drops `slot`'s expiry series unless another PullSet image sets the same one.
    fn forget_expiry(&self, series: &mut Series, slot: &(ObjectKey, String)) {
        if let Some(labels) = series.expiry.remove(slot)
            && !series.expiry.values().any(|l| *l == labels)
        {
            self.credential_expiry.remove(&labels);
        }
    }

    pub fn prepull(&self, o: &Outcome) {
        let labels = OutcomeLabels {
            registry: registry_of(&o.image),
            namespace: o.namespace.clone(),
            verdict: o.verdict.to_string(),
        };
        self.prepull_duration
            .get_or_create(&labels)
            .observe(o.duration_ms as f64 / 1000.0);
        self.prepull_outcomes.get_or_create(&labels).inc();
        self.series().outcomes.insert(labels.clone());
        if o.action == Action::Pulled {
            let registry = RegistryLabels {
                registry: labels.registry,
            };
            self.images_pulled.get_or_create(&registry).inc();
            self.bytes_pulled
                .get_or_create(&registry)
                .inc_by(o.size_bytes.unwrap_or(0));
        }
    }

    pub fn canary(&self, o: &CanaryOutcome) {
        let registry = registry_of(&o.image);
        let path = match o.path {
            crate::decide::canary::runner::CanaryPath::Registry => "registry",
            crate::decide::canary::runner::CanaryPath::Runtime => "runtime",
        };
        let labels = CanaryLabels {
            registry: registry.clone(),
            namespace: o.namespace.clone(),
            verdict: o.verdict.to_string(),
            path: path.into(),
        };
        self.canary_duration
            .get_or_create(&labels)
            .observe(o.duration_ms as f64 / 1000.0);
        self.canary_outcomes.get_or_create(&labels).inc();
        self.series().canaries.insert(labels.clone());
        self.canary_bytes
            .get_or_create(&RegistryLabels {
                registry: registry.clone(),
            })
            .inc_by(o.bytes);
        // One expiry series per PullSet image: the one its latest canary saw. A rotated
        // credential (a new label) or an outcome without an expiry removes the old series.
        let key = ObjectKey::new(&o.namespace, &o.pullset);
        let slot = (key.clone(), o.image.clone());
        let mut series = self.series();
        series.latest.insert(
            (key.clone(), o.image.clone(), path),
            (registry.clone(), o.verdict.to_string()),
        );
        self.count_latest(&mut series, &key);
        match (
            o.expires_at
                .as_deref()
                .and_then(crate::model::time::unix_seconds_of),
            &o.credential,
        ) {
            (Some(seconds), Some(credential)) => {
                let labels = ExpiryLabels {
                    namespace: o.namespace.clone(),
                    pullset: o.pullset.clone(),
                    registry,
                    credential: credential.clone(),
                };
                if series.expiry.get(&slot) != Some(&labels) {
                    self.forget_expiry(&mut series, &slot);
                    series.expiry.insert(slot, labels.clone());
                }
                self.credential_expiry.get_or_create(&labels).set(seconds);
            }
            _ => self.forget_expiry(&mut series, &slot),
        }
    }

    pub fn condition(&self, c: &Condition) {
        for status in [Status::True, Status::False, Status::Unknown] {
            self.condition
                .get_or_create(&ConditionLabels {
                    condition: c.type_.into(),
                    status: format!("{status:?}"),
                })
                .set(i64::from(status == c.status));
        }
    }

    /// Brings the CRI reconnect counter (kept by the CRI client) up to `total`.
    pub fn sync_cri_reconnects(&self, total: u64) {
        catch_up(&self.cri_reconnects, total);
    }

    /// Brings the API-server error counter of one kind (kept by the cluster source and the
    /// reporter) up to `total`.
    pub fn sync_apiserver_errors(&self, kind: ApiErrorKind, total: u64) {
        let labels = ApiErrorLabels {
            kind: kind.label().into(),
        };
        catch_up(&self.apiserver_errors.get_or_create(&labels), total);
    }

    pub fn event_sent(&self, reason: &str) {
        self.events
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn events_dropped(&self, n: u64) {
        self.events_dropped.inc_by(n);
    }

    /// Sets the image filesystem's gauges to the last reading: the size and free space while it
    /// can be read (removed while it cannot, never a stale figure), readable 1 or 0; the series
    /// of a mountpoint the runtime no longer names are removed.
    pub fn image_fs(&self, reading: Option<&crate::adapters::statvfs::ImageFsReading>) {
        let mut series = self.series();
        let labels = reading.map(|r| MountpointLabels {
            mountpoint: r.mountpoint.clone(),
        });
        if let Some(old) = series.image_fs.take()
            && Some(&old) != labels.as_ref()
        {
            self.image_fs_free.remove(&old);
            self.image_fs_capacity.remove(&old);
            self.image_fs_readable.remove(&old);
        }
        let (Some(reading), Some(labels)) = (reading, labels) else {
            return;
        };
        let gauge = |bytes: u64| i64::try_from(bytes).unwrap_or(i64::MAX);
        match reading.space {
            Some(space) => {
                self.image_fs_free
                    .get_or_create(&labels)
                    .set(gauge(space.free_bytes));
                self.image_fs_capacity
                    .get_or_create(&labels)
                    .set(gauge(space.capacity_bytes));
            }
            None => {
                self.image_fs_free.remove(&labels);
                self.image_fs_capacity.remove(&labels);
            }
        }
        self.image_fs_readable
            .get_or_create(&labels)
            .set(i64::from(reading.space.is_some()));
        series.image_fs = Some(labels);
    }

    /// Sets the pinned-image gauges: how many images the agent's own pins hold, and their bytes
    /// (saturating at `i64::MAX`).
    pub fn pinned(&self, images: u64, bytes: u64) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.pinned_images.set(gauge(images));
        self.pinned_image_bytes.set(gauge(bytes));
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Registers `metric` and returns it: the registered clone and the one kept are one metric.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

fn catch_up(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// The registry host of an image reference, as the metrics label it (`docker.io` for Hub).
fn registry_of(image: &str) -> String {
    crate::model::image_ref::ImageRef::parse(image)
        .map(|r| r.registry)
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::conditions::Tracker;
    use crate::model::verdict::Verdict;

    #[test]
    fn conditions_and_counters_are_exported_with_names_only() {
        let m = Metrics::new();
        let mut t = Tracker::new("PullCredentialsValid");
        m.condition(t.current());
        let c = t.observe(&[Verdict::Unauthorized], &["a".into()]).unwrap();
        m.condition(&c);
        m.events_dropped(3);
        m.sync_cri_reconnects(2);
        m.sync_cri_reconnects(5);
        m.sync_cri_reconnects(4);
        m.event_sent("CanaryFailed");
        m.sync_apiserver_errors(ApiErrorKind::Forbidden, 2);
        m.sync_apiserver_errors(ApiErrorKind::Server, 0);
        m.sync_apiserver_errors(ApiErrorKind::Forbidden, 3);
        let text = m.encode();
        assert!(
            text.contains(
                r#"pullgate_node_condition{condition="PullCredentialsValid",status="False"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"pullgate_node_condition{condition="PullCredentialsValid",status="Unknown"} 0"#
            ),
            "{text}"
        );
        assert!(text.contains("pullgate_events_dropped_total 3"), "{text}");
        assert!(text.contains("pullgate_cri_reconnects_total 5"), "{text}");
        assert!(
            text.contains(r#"pullgate_events_total{reason="CanaryFailed"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"pullgate_apiserver_errors_total{kind="403"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"pullgate_apiserver_errors_total{kind="5xx"} 0"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn pulls_count_images_and_bytes_by_registry() {
        let m = Metrics::new();
        let mut o = crate::model::outcome::Outcome {
            kind: crate::model::outcome::OutcomeKind::Prepull,
            time: String::new(),
            node: "n".into(),
            namespace: "team".into(),
            pullset: "critical".into(),
            image: "r.example.com:5000/a/b:1".into(),
            verdict: Verdict::Ok,
            message: String::new(),
            hint: None,
            duration_ms: 1500,
            action: Action::Pulled,
            attempts: 1,
            credential: None,
            image_ref: None,
            repo_digest: None,
            size_bytes: Some(4096),
            pinned: None,
            warnings: vec![],
            kubelet_access: Default::default(),
            kubelet_access_warning: None,
        };
        m.prepull(&o);
        o.action = Action::Present;
        o.size_bytes = None;
        m.prepull(&o);
        let text = m.encode();
        for line in [
            r#"pullgate_images_pulled_total{registry="r.example.com:5000"} 1"#,
            r#"pullgate_pulled_bytes_total{registry="r.example.com:5000"} 4096"#,
            r#"pullgate_prepull_outcomes_total{registry="r.example.com:5000",namespace="team",verdict="Ok"} 2"#,
            r#"pullgate_prepull_duration_seconds_count{registry="r.example.com:5000",namespace="team",verdict="Ok"} 2"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }

    fn canary(
        pullset: &str,
        image: &str,
        credential: &str,
        expires: Option<&str>,
    ) -> CanaryOutcome {
        let mut o = crate::decide::canary::runner::tests::outcome(image, Verdict::Ok, vec![]);
        o.namespace = "team".into();
        o.pullset = pullset.into();
        o.credential = Some(credential.into());
        o.expires_at = expires.map(Into::into);
        o
    }

    fn live(slots: &[(&str, &str, &str)]) -> BTreeSet<(ObjectKey, String)> {
        slots
            .iter()
            .map(|(ns, name, image)| (ObjectKey::new(*ns, *name), image.to_string()))
            .collect()
    }

    #[test]
    fn series_of_what_is_gone_are_removed() {
        let m = Metrics::new();
        let a = "r.example.com/a:1";
        let b = "r.example.com/b:1";
        m.canary(&canary(
            "s",
            a,
            "secret team/x key r",
            Some("2030-01-01T00:00:00Z"),
        ));
        m.canary(&canary(
            "t",
            b,
            "secret team/y key r",
            Some("2031-01-01T00:00:00Z"),
        ));
        let text = m.encode();
        assert!(
            text.contains(r#"pullset="s""#) && text.contains(r#"pullset="t""#),
            "{text}"
        );

        // PullSet t is deleted: its gauge goes, s's stays, the namespace's counters stay.
        m.retain(&live(&[("team", "s", a)]));
        let text = m.encode();
        assert!(!text.contains(r#"pullset="t""#), "{text}");
        assert!(
            text.contains(r#"credential="secret team/x key r"} 1893456000"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"pullgate_canary_outcomes_total{registry="r.example.com",namespace="team""#
            ),
            "{text}"
        );

        // A rotated credential replaces the series; an outcome without an expiry removes it.
        m.canary(&canary(
            "s",
            a,
            "secret team/z key r",
            Some("2032-01-01T00:00:00Z"),
        ));
        let text = m.encode();
        assert!(!text.contains("secret team/x key r"), "{text}");
        assert!(text.contains("secret team/z key r"), "{text}");
        m.canary(&canary("s", a, "secret team/z key r", None));
        assert!(
            !m.encode()
                .contains("pullgate_credential_expiry_timestamp_seconds{"),
            "{}",
            m.encode()
        );

        // The last PullSet of the namespace is gone: its counters and histograms go too.
        m.retain(&live(&[("other", "o", a)]));
        let text = m.encode();
        assert!(!text.contains(r#"namespace="team""#), "{text}");
    }

    #[test]
    fn an_expiry_after_9999_is_exported_as_a_lower_bound() {
        let m = Metrics::new();
        m.canary(&canary(
            "s",
            "r.example.com/a:1",
            "secret team/x key r",
            Some(crate::model::time::AFTER_9999),
        ));
        let text = m.encode();
        assert!(
            text.contains(r#"credential="secret team/x key r"} 253402300800"#),
            "{text}"
        );
    }

    #[test]
    fn image_fs_gauges_follow_the_last_reading_and_never_keep_a_stale_figure() {
        use crate::adapters::statvfs::ImageFsReading;
        use crate::decide::runtime::ImageFsSpace;
        let m = Metrics::new();
        m.image_fs(None);
        assert!(!m.encode().contains("pullgate_image_fs"), "{}", m.encode());
        let read = |mountpoint: &str, space: Option<(u64, u64)>| ImageFsReading {
            mountpoint: mountpoint.into(),
            space: space.map(|(free, capacity)| ImageFsSpace {
                free_bytes: free,
                capacity_bytes: capacity,
            }),
        };
        m.image_fs(Some(&read("/var/lib/c", Some((10, 100)))));
        let text = m.encode();
        for line in [
            r#"pullgate_image_fs_free_bytes{mountpoint="/var/lib/c"} 10"#,
            r#"pullgate_image_fs_capacity_bytes{mountpoint="/var/lib/c"} 100"#,
            r#"pullgate_image_fs_readable{mountpoint="/var/lib/c"} 1"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        // Cannot be read any more: no figure, readable 0.
        m.image_fs(Some(&read("/var/lib/c", None)));
        let text = m.encode();
        assert!(!text.contains("pullgate_image_fs_free_bytes{"), "{text}");
        assert!(
            !text.contains("pullgate_image_fs_capacity_bytes{"),
            "{text}"
        );
        assert!(
            text.contains(r#"pullgate_image_fs_readable{mountpoint="/var/lib/c"} 0"#),
            "{text}"
        );
        // Another mountpoint: the old one's series go; huge sizes saturate.
        m.image_fs(Some(&read("/d", Some((u64::MAX, u64::MAX)))));
        let text = m.encode();
        assert!(!text.contains("/var/lib/c"), "{text}");
        assert!(
            text.contains(&format!(
                r#"pullgate_image_fs_free_bytes{{mountpoint="/d"}} {}"#,
                i64::MAX
            )),
            "{text}"
        );
    }

    #[test]
    fn the_latest_canary_verdicts_are_counted_per_pullset_and_path_and_never_kept_stale() {
        use crate::decide::canary::runner::CanaryPath;
        let m = Metrics::new();
        let a = "r.example.com/a:1";
        let b = "r.example.com/b:1";
        let series = |m: &Metrics| -> Vec<String> {
            let mut lines: Vec<String> = m
                .encode()
                .lines()
                .filter(|l| l.starts_with("pullgate_canary_images{"))
                .map(str::to_owned)
                .collect();
            lines.sort();
            lines
        };
        let images = |path: &str, verdict: &str, n: u32| {
            format!(
                r#"pullgate_canary_images{{namespace="team",pullset="s",registry="r.example.com",path="{path}",verdict="{verdict}"}} {n}"#
            )
        };
        m.canary(&canary("s", a, "secret team/x key r", None));
        m.canary(&canary("s", b, "secret team/x key r", None));
        assert_eq!(series(&m), [images("registry", "Ok", 2)]);

        // One image fails now: one Ok, one Unauthorized; a runtime canary is its own path.
        let mut failing = canary("s", b, "secret team/x key r", None);
        failing.verdict = Verdict::Unauthorized;
        m.canary(&failing);
        failing.path = CanaryPath::Runtime;
        m.canary(&failing);
        assert_eq!(
            series(&m),
            [
                images("registry", "Ok", 1),
                images("registry", "Unauthorized", 1),
                images("runtime", "Unauthorized", 1),
            ]
        );

        // It recovers on the registry path: the Unauthorized series goes, it does not stay at 0.
        m.canary(&canary("s", b, "secret team/x key r", None));
        assert_eq!(
            series(&m),
            [
                images("registry", "Ok", 2),
                images("runtime", "Unauthorized", 1),
            ]
        );

        // Image b leaves the PullSet: its verdicts go with it; the PullSet's last image goes too.
        m.retain(&live(&[("team", "s", a)]));
        assert_eq!(series(&m), [images("registry", "Ok", 1)]);
        m.retain(&live(&[]));
        assert!(series(&m).is_empty(), "{}", m.encode());
    }

    #[test]
    fn the_pinned_gauges_say_what_the_agents_pins_hold() {
        let m = Metrics::new();
        let text = m.encode();
        assert!(text.contains("\npullgate_pinned_images 0\n"), "{text}");
        assert!(text.contains("\npullgate_pinned_image_bytes 0\n"), "{text}");
        m.pinned(2, 3_000_000);
        let text = m.encode();
        assert!(text.contains("\npullgate_pinned_images 2\n"), "{text}");
        assert!(
            text.contains("\npullgate_pinned_image_bytes 3000000\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE pullgate_pinned_image_bytes gauge"),
            "{text}"
        );
        m.pinned(0, u64::MAX);
        assert!(
            m.encode()
                .contains(&format!("\npullgate_pinned_image_bytes {}\n", i64::MAX)),
            "{}",
            m.encode()
        );
    }

    #[test]
    fn registry_label_table() {
        for (image, registry) in [
            ("nginx", "docker.io"),
            (
                "registry.example.com:5000/a/b:1",
                "registry.example.com:5000",
            ),
            (
                "ghcr.io/x/y@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "ghcr.io",
            ),
            ("Not A Ref", "unknown"),
        ] {
            assert_eq!(registry_of(image), registry, "{image}");
        }
    }
}
