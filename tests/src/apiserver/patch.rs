//! Patch semantics: strategic merge with the merge keys of the types pullgate patches.

use serde_json::{Map, Value};

/// How a list field merges under a strategic merge patch, from the `patchStrategy` and
/// `patchMergeKey` tags of k8s.io/api core/v1 `types.go` and apimachinery `meta/v1/types.go`.
enum ListStrategy {
    /// `patchStrategy:"merge" patchMergeKey:"KEY"`: items are matched by this field.
    MergeBy(&'static str),
    /// `patchStrategy:"merge"` on a list of strings: the union, in order.
    MergeSet,
    /// No strategy: the patch's list replaces the stored one.
    Replace,
}

/// The strategy of a list field, by its name (unique among the fields pullgate touches):
/// `NodeStatus.Conditions` and `NodeStatus.Addresses` merge by `type`, `ObjectMeta.OwnerReferences`
/// by `uid`, `ObjectMeta.Finalizers` as a set; `NodeSpec.Taints` and `NodeStatus.Images` have no
/// strategy and are replaced.
fn list_strategy(field: &str) -> ListStrategy {
    match field {
        "conditions" | "addresses" => ListStrategy::MergeBy("type"),
        "ownerReferences" => ListStrategy::MergeBy("uid"),
        "finalizers" => ListStrategy::MergeSet,
        _ => ListStrategy::Replace,
    }
}

const DIRECTIVE: &str = "$patch";

/// Strategic merge as the API server applies it (k8s.io/apimachinery
/// `pkg/util/strategicpatch/patch.go`): maps merge, `null` deletes, lists by [`list_strategy`];
/// `$patch: replace` in a map replaces it, `$patch: delete` in a map deletes it; in a merged list,
/// an item `{"KEY": V, "$patch": "delete"}` deletes the stored item with that key and an item
/// `{"$patch": "replace"}` makes the patch's other items replace the list.
pub(super) fn strategic_merge(target: &mut Value, patch: &Value) {
    merge_value(target, patch, "");
}

fn merge_value(target: &mut Value, patch: &Value, field: &str) {
    if target.is_null() {
        // An absent field merges as an empty one (so a patch's `null`s and directives vanish).
        match patch {
            Value::Object(_) => *target = Value::Object(Map::new()),
            Value::Array(_) => *target = Value::Array(Vec::new()),
            _ => {}
        }
    }
    match (target, patch) {
        (t @ Value::Object(_), Value::Object(p)) => merge_map(t, p),
        (t @ Value::Array(_), Value::Array(p)) => merge_list(t, p, field),
        (t, p) => *t = strip_directives(p),
    }
}

fn merge_map(target: &mut Value, patch: &Map<String, Value>) {
    match patch.get(DIRECTIVE).and_then(Value::as_str) {
        Some("replace") => {
            *target = strip_directives(&Value::Object(patch.clone()));
            return;
        }
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        _ => {}
    }
    let Value::Object(t) = target else {
        return;
    };
    for (k, v) in patch {
        if k == DIRECTIVE {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        let slot = t.entry(k.clone()).or_insert(Value::Null);
        merge_value(slot, v, k);
        // `$patch: delete` of a nested map removes its field.
        if slot.is_null() {
            t.remove(k);
        }
    }
}

fn merge_list(target: &mut Value, patch: &[Value], field: &str) {
    let Value::Array(t) = target else {
        return;
    };
    let replace = patch
        .iter()
        .any(|item| item.get(DIRECTIVE).and_then(Value::as_str) == Some("replace"));
    match list_strategy(field) {
        _ if replace => {
            *t = patch
                .iter()
                .filter(|item| item.get(DIRECTIVE).is_none())
                .map(strip_directives)
                .collect();
        }
        ListStrategy::MergeBy(key) => {
            for item in patch {
                let position = t.iter().position(|c| c.get(key) == item.get(key));
                let delete = item.get(DIRECTIVE).and_then(Value::as_str) == Some("delete");
                match (position, delete) {
                    (Some(i), true) => {
                        t.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => merge_value(&mut t[i], item, ""),
                    (None, false) => t.push(strip_directives(item)),
                }
            }
        }
        ListStrategy::MergeSet => {
            for item in patch {
                if !t.contains(item) {
                    t.push(item.clone());
                }
            }
        }
        ListStrategy::Replace => *t = patch.iter().map(strip_directives).collect(),
    }
}

/// A patch value stored as is, without its `$patch` directives.
fn strip_directives(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != DIRECTIVE)
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}
