//! Pruning, null removal, `metadata` coercion and defaulting, as tables: (object sent, object the
//! server keeps). The cases follow `pruning/algorithm_test.go` and `defaulting/algorithm_test.go`.

use super::*;
use serde_json::json;

/// A schema with one of each feature: a typed `spec` (defaults, a nullable object with defaults
/// below, a non-nullable one without), `x-kubernetes-preserve-unknown-fields`, an embedded
/// resource, `additionalProperties`, `items`.
fn schema() -> Structural {
    Structural::served(
        &json!({
            "type": "object",
            "properties": {
                "spec": {"type": "object", "properties": {
                    "flag": {"type": "boolean", "default": true},
                    "canary": {"type": "object", "nullable": true, "properties": {
                        "depth": {"type": "string", "default": "manifest"},
                        "note": {"type": "string", "nullable": true}}},
                    "limits": {"type": "object", "default": {}, "properties": {
                        "max": {"type": "integer", "default": 3}}},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "ports": {"type": "object", "additionalProperties": {
                        "type": "object", "properties": {"port": {"type": "integer", "default": 80}}}},
                    "items": {"type": "array", "items": {"type": "object", "properties": {
                        "name": {"type": "string"}}}},
                    "names": {"type": "array", "items": {"type": "string", "default": "x"}},
                    "selector": {"type": "object", "properties": {"key": {"type": "string"}}},
                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                              "properties": {"typed": {"type": "object", "properties": {
                                  "kept": {"type": "string"}}}}},
                    "template": {"type": "object", "x-kubernetes-embedded-resource": true,
                                 "properties": {"spec": {"type": "object", "properties": {
                                     "image": {"type": "string"}}}}},
                }},
            },
        }),
        "",
    )
    .unwrap()
}

fn check(cases: &[(Value, Value)]) {
    let schema = schema();
    for (sent, kept) in cases {
        let mut object = sent.clone();
        coerce(&mut object, &schema);
        assert_eq!(&object, kept, "sent {sent}");
    }
}

/// A PullSet-like object around `spec`.
fn obj(spec: Value) -> Value {
    json!({"apiVersion": "g.io/v1", "kind": "K", "metadata": {"name": "n"}, "spec": spec})
}

/// `spec` with the defaults of [`schema`] that apply to every object.
fn defaulted(spec: Value) -> Value {
    let mut spec = spec;
    for (k, v) in [("flag", json!(true)), ("limits", json!({"max": 3}))] {
        if spec.get(k).is_none() {
            spec[k] = v;
        }
    }
    obj(spec)
}

#[test]
fn unknown_fields_are_pruned_and_the_root_keeps_api_version_kind_and_metadata() {
    check(&[
        // Unknown in spec, and at the root; `status` is not in the schema either.
        (
            json!({"apiVersion": "g.io/v1", "kind": "K", "metadata": {"name": "n"},
                   "spec": {"priority": "high"}, "status": {"x": 1}, "other": 2}),
            defaulted(json!({})),
        ),
        // Below a known object, a list's items, a map's values.
        (
            obj(json!({"selector": {"key": "k", "op": "In"},
                       "items": [{"name": "a", "bogus": 1}, {"bogus": 2}],
                       "labels": {"a": "b"}})),
            defaulted(
                json!({"selector": {"key": "k"}, "items": [{"name": "a"}, {}],
                             "labels": {"a": "b"}}),
            ),
        ),
        // The root's metadata is `ObjectMeta`: its own fields kept, unknown ones dropped.
        (
            json!({"apiVersion": "g.io/v1", "kind": "K",
                   "metadata": {"name": "n", "namespace": "ns", "labels": {"a": "b"},
                                "annotations": {"c": "d"}, "finalizers": ["f"],
                                "bogus": 1, "generateName": null},
                   "spec": {}}),
            json!({"apiVersion": "g.io/v1", "kind": "K",
                   "metadata": {"name": "n", "namespace": "ns", "labels": {"a": "b"},
                                "annotations": {"c": "d"}, "finalizers": ["f"]},
                   "spec": {"flag": true, "limits": {"max": 3}}}),
        ),
    ]);
}

#[test]
fn preserve_unknown_fields_keeps_what_is_below_and_prunes_what_its_schema_names() {
    check(&[(
        obj(json!({"extra": {"anything": {"deep": [1, {"x": 2}]},
                             "typed": {"kept": "k", "dropped": "d"}}})),
        defaulted(json!({"extra": {"anything": {"deep": [1, {"x": 2}]},
                                   "typed": {"kept": "k"}}})),
    )]);
}

#[test]
fn an_embedded_resource_keeps_its_type_and_object_meta_and_prunes_the_rest() {
    check(&[(
        obj(json!({"template": {"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": "p", "labels": {"a": "b"}, "bogus": 1},
                                "spec": {"image": "i", "command": ["x"]}, "status": {}}})),
        defaulted(json!({"template": {"apiVersion": "v1", "kind": "Pod",
                                      "metadata": {"name": "p", "labels": {"a": "b"}},
                                      "spec": {"image": "i"}}})),
    )]);
}

#[test]
fn defaults_apply_to_absent_fields_and_below_an_object_only_when_it_is_there() {
    check(&[
        // No canary: none of its defaults; `limits` defaulted to `{}`, then its own default.
        (
            obj(json!({})),
            obj(json!({"flag": true, "limits": {"max": 3}})),
        ),
        // An empty canary gets its defaults; a given value is kept.
        (
            obj(json!({"canary": {}, "flag": false, "limits": {"max": 9}})),
            obj(json!({"canary": {"depth": "manifest"}, "flag": false, "limits": {"max": 9}})),
        ),
        // additionalProperties and items: each value defaulted by its schema.
        (
            obj(json!({"ports": {"http": {}, "https": {"port": 443}}})),
            defaulted(json!({"ports": {"http": {"port": 80}, "https": {"port": 443}}})),
        ),
    ]);
}

#[test]
fn nulls_follow_nullable_and_default() {
    check(&[
        // Nullable: kept, and nothing below it is defaulted.
        (
            obj(json!({"canary": null})),
            defaulted(json!({"canary": null})),
        ),
        (
            obj(json!({"canary": {"note": null}})),
            defaulted(json!({"canary": {"note": null, "depth": "manifest"}})),
        ),
        // Not nullable, with a default: the default. Without one: removed.
        (
            obj(json!({"flag": null, "limits": null, "selector": null, "items": null})),
            obj(json!({"flag": true, "limits": {"max": 3}})),
        ),
        // In a list whose items have a default: the default.
        (
            obj(json!({"names": ["a", null]})),
            defaulted(json!({"names": ["a", "x"]})),
        ),
    ]);
}

#[test]
fn a_default_is_pruned_as_the_object_around_it_would_be() {
    let schema = Structural::served(
        &json!({"type": "object", "properties": {"spec": {"type": "object",
            "default": {"a": 1, "unknown": 2},
            "properties": {"a": {"type": "integer"}}}}}),
        "",
    )
    .unwrap();
    let mut object = json!({"apiVersion": "g.io/v1", "kind": "K", "metadata": {"name": "n"}});
    coerce(&mut object, &schema);
    assert_eq!(object["spec"], json!({"a": 1}));
}

#[test]
fn the_shipped_pullset_crd_defaults_what_the_agent_defaults() {
    let crd = crate::apiserver::objects::pullset_crd();
    let schema =
        Structural::served(&crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"], "").unwrap();
    let cases = [
        (
            json!({"images": [{"image": "a"}]}),
            json!({"images": [{"image": "a"}], "gate": true, "prePull": true}),
        ),
        (
            json!({"images": [{"image": "a"}], "canary": {}, "priority": "high",
                   "imagePullSecrets": null, "gate": null}),
            json!({"images": [{"image": "a"}], "gate": true, "prePull": true,
                   "canary": {"depth": "manifest", "onRotation": true, "runtime": false}}),
        ),
    ];
    for (spec, kept) in cases {
        let mut object = json!({"apiVersion": "pullgate.io/v1alpha1", "kind": "PullSet",
                                "metadata": {"name": "n", "namespace": "team"}, "spec": spec});
        coerce(&mut object, &schema);
        assert_eq!(object["spec"], kept);
        assert_eq!(
            object["metadata"],
            json!({"name": "n", "namespace": "team"})
        );
    }
}

#[test]
fn a_schema_that_is_not_structural_is_refused_naming_the_field() {
    let cases = [
        (
            json!({"properties": {"spec": {"items": [{}]}}}),
            ".properties[spec].items: must be a schema, but is an array",
        ),
        (
            json!({"properties": {"spec": {"$ref": "#/x"}}}),
            ".properties[spec].$ref: is not supported in a structural schema",
        ),
        (
            json!({"properties": {"spec": {"nullable": "yes"}}}),
            ".properties[spec].nullable: must be a boolean",
        ),
        (
            json!({"properties": {"spec": {"additionalProperties": 1}}}),
            ".properties[spec].additionalProperties: must be a boolean or a schema",
        ),
        (
            json!({"properties": [1]}),
            ".properties: must be an object of schemas",
        ),
    ];
    for (schema, message) in cases {
        let err = Structural::served(&schema, "").unwrap_err();
        assert_eq!(err.to_string(), message, "{schema}");
    }
}
