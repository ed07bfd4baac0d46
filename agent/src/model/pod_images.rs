//! The one home of "the images a pod spec pulls": every image the kubelet pulls with the pod's
//! pull secrets (the pod rule applies alike to each). Containers of each kind (`initContainers`,
//! `containers`, `ephemeralContainers`), then image volumes (`volumes[].image.reference`,
//! KEP-4639, GA in 1.36). Used by `diagnose --pod` and by `audit`'s workloads.
//!
//! The spec is read as JSON, field by field: whatever the k8s-openapi version knows of image
//! volumes, and without failing on a field of an unexpected shape (an untrusted spec's odd field
//! is skipped, never a panic).

use serde_json::Value;

/// One image a pod pulls with its pull secrets: a container's or an image volume's, as the pod
/// spec writes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodImageUse {
    /// `container web`, `initContainer migrate`, `ephemeralContainer debug`, `volume models`.
    pub used_by: String,
    pub image: String,
}

/// Every image the pod spec (`PodSpec` as JSON) pulls, in the order above. A container or volume
/// without an image (or with an empty one) pulls nothing and is left out.
pub fn pod_image_uses(spec: &Value) -> Vec<PodImageUse> {
    let containers = [
        ("initContainers", "initContainer"),
        ("containers", "container"),
        ("ephemeralContainers", "ephemeralContainer"),
    ]
    .into_iter()
    .flat_map(|(field, kind)| {
        spec[field]
            .as_array()
            .into_iter()
            .flatten()
            .map(move |c| (kind, &c["name"], &c["image"]))
    });
    let volumes = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| ("volume", &v["name"], &v["image"]["reference"]));
    containers
        .chain(volumes)
        .filter_map(|(kind, name, image)| {
            let image = image.as_str().filter(|i| !i.is_empty())?;
            Some(PodImageUse {
                used_by: format!("{kind} {}", name.as_str().unwrap_or("?")),
                image: image.to_string(),
            })
        })
        .collect()
}

/// The same, of a typed pod spec (a `Pod` read by `get`, for `diagnose --pod`).
pub fn of_pod_spec(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<PodImageUse> {
    serde_json::to_value(spec)
        .map(|v| pod_image_uses(&v))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pods_images_include_its_image_volumes() {
        let spec = json!({
            "initContainers": [{"name": "migrate", "image": "r.io/team/migrate:1"}],
            "containers": [{"name": "web", "image": "r.io/team/web:1"}],
            "ephemeralContainers": [{"name": "debug", "image": "busybox"}],
            "volumes": [
                {"name": "models", "image": {"reference": "r.io/team/models:v3", "pullPolicy": "IfNotPresent"}},
                {"name": "empty", "image": {}},
                {"name": "blank", "image": {"reference": ""}},
                {"name": "cache", "emptyDir": {}}
            ]
        });
        let uses: Vec<String> = pod_image_uses(&spec)
            .into_iter()
            .map(|u| format!("{} image {}", u.used_by, u.image))
            .collect();
        assert_eq!(
            uses,
            [
                "initContainer migrate image r.io/team/migrate:1",
                "container web image r.io/team/web:1",
                "ephemeralContainer debug image busybox",
                "volume models image r.io/team/models:v3",
            ]
        );
    }

    #[test]
    fn fields_of_an_unexpected_shape_are_skipped() {
        let spec = json!({
            "containers": "not a list",
            "initContainers": [{"name": 7, "image": "r.io/a:1"}, {"image": ["x"]}, 3],
            "volumes": [{"name": "v", "image": {"reference": {"x": 1}}}, null]
        });
        let uses = pod_image_uses(&spec);
        assert_eq!(
            uses,
            [PodImageUse {
                used_by: "initContainer ?".into(),
                image: "r.io/a:1".into()
            }]
        );
        assert!(pod_image_uses(&Value::Null).is_empty());
    }

    #[test]
    fn the_typed_pod_spec_keeps_its_image_volumes() {
        // k8s-openapi's PodSpec (v1_33) knows `image` volumes: serialised back, they are here.
        let spec: k8s_openapi::api::core::v1::PodSpec = serde_json::from_value(json!({
            "containers": [{"name": "web", "image": "r.io/team/web:1"}],
            "volumes": [{"name": "models", "image": {"reference": "r.io/team/models:v3"}}]
        }))
        .unwrap();
        let uses = of_pod_spec(&spec);
        assert_eq!(uses.len(), 2);
        assert_eq!(uses[1].used_by, "volume models");
    }
}
