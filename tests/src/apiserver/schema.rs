//! Structural schemas and what the real server does with them to every custom resource it decodes,
//! from a request body or from storage: pruning of unknown fields, removal of non-nullable nulls,
//! coercion of `metadata` to `ObjectMeta`, and defaulting. Ported from k8s.io/apiextensions-apiserver:
//! `pkg/apiserver/schema/convert.go` (`NewStructural`), `schema/pruning/algorithm.go` (`prune`,
//! `skipPrune`), `schema/defaulting/algorithm.go` (`Default`), `schema/defaulting/prunenulls.go`,
//! `schema/defaulting/prune.go` and `surroundingobject.go` (`PruneDefaults`, done once per schema),
//! `schema/objectmeta/coerce.go` and `algorithm.go` (`metadata` round-tripped through `ObjectMeta`),
//! and their order in `pkg/apiserver/customresource_handler.go` (`unstructuredSchemaCoercer.apply`,
//! then `unstructuredDefaulter`).

use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The fields a resource (the root, or an `x-kubernetes-embedded-resource`) keeps whatever its
/// schema says (`metaFields` in `pruning/algorithm.go`).
const META_FIELDS: &[&str] = &["apiVersion", "kind", "metadata"];

/// The JSON fields of `metav1.ObjectMeta` (k8s.io/apimachinery `pkg/apis/meta/v1/types.go`): what
/// survives of a resource's `metadata` when the server round-trips it through that type.
const OBJECT_META_FIELDS: &[&str] = &[
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
];

/// OpenAPI fields a structural schema may not use (`validateUnsupportedFields` in `convert.go`).
const UNSUPPORTED_FIELDS: &[&str] = &[
    "id",
    "$schema",
    "$ref",
    "patternProperties",
    "dependencies",
    "additionalItems",
    "definitions",
];

/// Why a CRD's schema cannot be used, naming the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SchemaError {
    #[error("{path}: must be an object (a schema)")]
    NotASchema { path: String },
    #[error("{path}.items: must be a schema, but is an array")]
    ItemsArray { path: String },
    #[error("{path}.additionalProperties: must be a boolean or a schema")]
    AdditionalProperties { path: String },
    #[error("{path}.properties: must be an object of schemas")]
    Properties { path: String },
    #[error("{path}.{field}: must be a boolean")]
    NotABoolean { path: String, field: &'static str },
    #[error("{path}.{field}: is not supported in a structural schema")]
    Unsupported { path: String, field: String },
}

/// What pruning and defaulting read of an OpenAPI v3 schema (`schema.Structural`).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Structural {
    properties: BTreeMap<String, Structural>,
    /// `additionalProperties`: `Some(None)` for a bare boolean, `Some(Some(_))` for a schema.
    additional_properties: Option<Option<Box<Structural>>>,
    items: Option<Box<Structural>>,
    /// `default`; a `null` default is none, as `Default.Object == nil` in Go.
    default: Option<Value>,
    nullable: bool,
    preserve_unknown_fields: bool,
    embedded_resource: bool,
}

impl Structural {
    /// `NewStructural`, then `PruneDefaults`: the schema the server serves a version with.
    pub(crate) fn served(schema: &Value, path: &str) -> Result<Self, SchemaError> {
        let mut structural = Self::from_json(schema, path)?;
        prune_defaults(&mut structural);
        Ok(structural)
    }

    fn from_json(schema: &Value, path: &str) -> Result<Self, SchemaError> {
        let Value::Object(s) = schema else {
            return Err(SchemaError::NotASchema { path: path.into() });
        };
        if let Some(field) = UNSUPPORTED_FIELDS.iter().find(|f| s.contains_key(**f)) {
            return Err(SchemaError::Unsupported {
                path: path.into(),
                field: (*field).into(),
            });
        }
        let flag = |field: &'static str| match s.get(field) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(SchemaError::NotABoolean {
                path: path.into(),
                field,
            }),
        };
        let mut structural = Self {
            default: s.get("default").filter(|d| !d.is_null()).cloned(),
            nullable: flag("nullable")?,
            preserve_unknown_fields: flag("x-kubernetes-preserve-unknown-fields")?,
            embedded_resource: flag("x-kubernetes-embedded-resource")?,
            ..Self::default()
        };
        match s.get("items") {
            None | Some(Value::Null) => {}
            Some(Value::Array(_)) => return Err(SchemaError::ItemsArray { path: path.into() }),
            Some(items) => {
                structural.items = Some(Box::new(Self::from_json(items, &format!("{path}.items"))?))
            }
        }
        match s.get("properties") {
            None | Some(Value::Null) => {}
            Some(Value::Object(properties)) => {
                for (k, p) in properties {
                    let child = Self::from_json(p, &format!("{path}.properties[{k}]"))?;
                    structural.properties.insert(k.clone(), child);
                }
            }
            Some(_) => return Err(SchemaError::Properties { path: path.into() }),
        }
        structural.additional_properties = match s.get("additionalProperties") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(_)) => Some(None),
            Some(a @ Value::Object(_)) => Some(Some(Box::new(Self::from_json(
                a,
                &format!("{path}.additionalProperties"),
            )?))),
            Some(_) => return Err(SchemaError::AdditionalProperties { path: path.into() }),
        };
        Ok(structural)
    }

    fn additional(&self) -> Option<&Structural> {
        self.additional_properties
            .as_ref()
            .and_then(|a| a.as_deref())
    }

    /// The schema of a field of an object of this schema (`getSchemaForField` in `prunenulls.go`).
    fn field(&self, k: &str) -> Option<&Structural> {
        self.properties.get(k).or_else(|| self.additional())
    }

    /// This schema as a resource's root: `apiVersion`, `kind` and `metadata` kept
    /// (`PruneWithOptions` with `isResourceRoot`).
    fn as_root(&self) -> Structural {
        Structural {
            embedded_resource: true,
            ..self.clone()
        }
    }
}

/// What the real server does to a custom resource it decodes, from a request body (a create, an
/// update, a patch's result) or from storage: `unstructuredSchemaCoercer.apply` (prune, remove
/// non-nullable nulls without a default, `metadata` as `ObjectMeta`), then `Default`.
pub(crate) fn coerce(object: &mut Value, schema: &Structural) {
    let root = schema.as_root();
    prune(object, Some(&root));
    prune_non_nullable_nulls(object, Some(schema));
    coerce_object_meta(object, &root);
    default(object, schema);
}

/// `prune` of `pruning/algorithm.go`: removes every field the schema does not specify.
fn prune(x: &mut Value, s: Option<&Structural>) {
    if let Some(s) = s
        && s.preserve_unknown_fields
    {
        skip_prune(x, s);
        return;
    }
    match x {
        Value::Object(map) => {
            let Some(s) = s else {
                map.clear();
                return;
            };
            map.retain(|k, v| {
                if s.embedded_resource && META_FIELDS.contains(&k.as_str()) {
                    return true;
                }
                if let Some(prop) = s.properties.get(k) {
                    prune(v, Some(prop));
                    true
                } else if s.additional_properties.is_some() {
                    prune(v, s.additional());
                    true
                } else {
                    false
                }
            });
        }
        Value::Array(items) => {
            let item_schema = s.and_then(|s| s.items.as_deref());
            for v in items {
                prune(v, item_schema);
            }
        }
        _ => {}
    }
}

/// `skipPrune`: below `x-kubernetes-preserve-unknown-fields`, unknown fields stay, and the fields
/// the schema does specify are pruned by their own schema.
fn skip_prune(x: &mut Value, s: &Structural) {
    match x {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if s.embedded_resource && META_FIELDS.contains(&k.as_str()) {
                    continue;
                }
                if let Some(prop) = s.properties.get(k) {
                    prune(v, Some(prop));
                } else if s.additional_properties.is_some() {
                    prune(v, s.additional());
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = s.items.as_deref() {
                for v in items {
                    skip_prune(v, item_schema);
                }
            }
        }
        _ => {}
    }
}

/// `PruneNonNullableNullsWithoutDefaults`: a `null` where the schema allows none and has no
/// default to put there is removed (one with a default is defaulted later).
fn prune_non_nullable_nulls(x: &mut Value, s: Option<&Structural>) {
    match x {
        Value::Object(map) => map.retain(|k, v| {
            let schema = s.and_then(|s| s.field(k));
            if v.is_null() && schema.is_some_and(|s| !s.nullable && s.default.is_none()) {
                return false;
            }
            prune_non_nullable_nulls(v, schema);
            true
        }),
        Value::Array(items) => {
            let item_schema = s.and_then(|s| s.items.as_deref());
            for v in items {
                prune_non_nullable_nulls(v, item_schema);
            }
        }
        _ => {}
    }
}

/// `isNonNullableNull`.
fn is_non_nullable_null(x: &Value, s: Option<&Structural>) -> bool {
    x.is_null() && s.is_some_and(|s| !s.nullable)
}

/// `Default` of `defaulting/algorithm.go`: an absent field (or a `null` the schema does not allow)
/// with a default gets it; then every present field is defaulted by its own schema, so the
/// defaults below an object apply only when that object is there (given or defaulted).
fn default(x: &mut Value, s: &Structural) {
    match x {
        Value::Object(map) => {
            for (k, prop) in &s.properties {
                let Some(d) = &prop.default else { continue };
                if map
                    .get(k)
                    .is_none_or(|v| is_non_nullable_null(v, Some(prop)))
                {
                    map.insert(k.clone(), d.clone());
                }
            }
            for (k, v) in map.iter_mut() {
                if let Some(prop) = s.properties.get(k) {
                    default(v, prop);
                } else if let Some(additional) = s.additional() {
                    if is_non_nullable_null(v, Some(additional)) {
                        *v = additional.default.clone().unwrap_or(Value::Null);
                    }
                    default(v, additional);
                }
            }
        }
        Value::Array(items) => {
            let Some(item_schema) = s.items.as_deref() else {
                return;
            };
            for v in items {
                if is_non_nullable_null(v, Some(item_schema)) {
                    *v = item_schema.default.clone().unwrap_or(Value::Null);
                }
                default(v, item_schema);
            }
        }
        _ => {}
    }
}

/// `metadata` of the root and of every `x-kubernetes-embedded-resource`, as the server keeps it:
/// round-tripped through `ObjectMeta` (`objectmeta.Coerce`, `GetObjectMeta`/`SetObjectMeta`), so
/// only its known fields stay (`null`s are omitted, as `ObjectMeta`'s `omitempty` fields are).
fn coerce_object_meta(x: &mut Value, s: &Structural) {
    match x {
        Value::Object(map) => {
            if s.embedded_resource
                && let Some(Value::Object(meta)) = map.get_mut("metadata")
            {
                meta.retain(|k, v| OBJECT_META_FIELDS.contains(&k.as_str()) && !v.is_null());
            }
            for (k, v) in map.iter_mut() {
                if let Some(prop) = s.properties.get(k) {
                    coerce_object_meta(v, prop);
                } else if let Some(additional) = s.additional() {
                    coerce_object_meta(v, additional);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = s.items.as_deref() {
                for v in items {
                    coerce_object_meta(v, item_schema);
                }
            }
        }
        _ => {}
    }
}

/// A step from a schema to one below it, and the matching step in an object
/// (`SurroundingObjectFunc.Child(k)`, `.Child("*")`, `.Index()`).
#[derive(Clone)]
enum Step {
    Property(String),
    Additional,
    Items,
}

/// `PruneDefaults` (`defaulting/prune.go`): each default is pruned as the object around it would
/// be, in the root schema, so that defaulting never adds a field pruning would remove.
fn prune_defaults(root: &mut Structural) {
    let mut found = Vec::new();
    collect_defaults(root, &mut Vec::new(), &mut found);
    let schema = root.as_root();
    for (path, value) in found {
        let pruned = pruned_in_place(&schema, &path, value);
        if let Some(node) = schema_at(root, &path) {
            node.default = pruned.filter(|d| !d.is_null());
        }
    }
}

fn collect_defaults(s: &Structural, path: &mut Vec<Step>, found: &mut Vec<(Vec<Step>, Value)>) {
    if let Some(d) = &s.default {
        found.push((path.clone(), d.clone()));
    }
    if let Some(additional) = s.additional() {
        path.push(Step::Additional);
        collect_defaults(additional, path, found);
        path.pop();
    }
    if let Some(items) = s.items.as_deref() {
        path.push(Step::Items);
        collect_defaults(items, path, found);
        path.pop();
    }
    for (k, prop) in &s.properties {
        path.push(Step::Property(k.clone()));
        collect_defaults(prop, path, found);
        path.pop();
    }
}

fn schema_at<'a>(s: &'a mut Structural, path: &[Step]) -> Option<&'a mut Structural> {
    let Some((step, rest)) = path.split_first() else {
        return Some(s);
    };
    let next = match step {
        Step::Property(k) => s.properties.get_mut(k)?,
        Step::Additional => s.additional_properties.as_mut()?.as_deref_mut()?,
        Step::Items => s.items.as_deref_mut()?,
    };
    schema_at(next, rest)
}

/// The default `value` at `path`, put in the object around it, pruned and coerced at the root,
/// and read back (`None`: pruned away, or a root default that is no object, which the real
/// server's CRD validation refuses).
fn pruned_in_place(root: &Structural, path: &[Step], value: Value) -> Option<Value> {
    let mut object = value;
    for step in path.iter().rev() {
        object = match step {
            Step::Property(k) => Value::Object(Map::from_iter([(k.clone(), object)])),
            Step::Additional => Value::Object(Map::from_iter([("*".to_string(), object)])),
            Step::Items => Value::Array(vec![object]),
        };
    }
    if !object.is_object() {
        return None;
    }
    coerce_object_meta(&mut object, root);
    prune(&mut object, Some(root));
    let mut at = &object;
    for step in path {
        at = match step {
            Step::Property(k) => at.as_object()?.get(k)?,
            Step::Additional => at.as_object()?.get("*")?,
            Step::Items => at.as_array()?.first()?,
        };
    }
    Some(at.clone())
}

#[cfg(test)]
mod tests;
