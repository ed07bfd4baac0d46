//! Patch semantics.

use serde_json::Value;

/// Strategic merge as the API server applies it to the objects pullgate patches: maps merge,
/// lists named `conditions` merge by `type`, other lists are replaced, `null` deletes.
pub(super) fn strategic_merge(target: &mut Value, patch: &Value, key: &str) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v, k);
                }
            }
        }
        (Value::Array(t), Value::Array(p)) if key == "conditions" => {
            for item in p {
                let type_ = &item["type"];
                match t.iter_mut().find(|c| &c["type"] == type_) {
                    Some(existing) => strategic_merge(existing, item, ""),
                    None => t.push(item.clone()),
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}
