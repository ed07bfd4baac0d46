//! `apiextensions.k8s.io/v1` CustomResourceDefinitions: checked on create and update (the part of
//! the real server's `pkg/apis/apiextensions/validation/validation.go` this server relies on), and
//! the schema a stored CRD gives the custom resources of the version it serves
//! (`customresource_handler.go`: `getOrCreateServingInfoFor`, the structural schema per version).

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::schema::{SchemaError, Structural};
use super::{Collection, Store, status};

/// The API and collection of CRDs.
pub(crate) const CRD_API: &str = "apiextensions.k8s.io/v1";
pub(crate) const CRD_PLURAL: &str = "customresourcedefinitions";

/// Why a CRD is refused, or a custom resource cannot be served, naming the CRD and the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CrdError {
    #[error(
        "CustomResourceDefinition.apiextensions.k8s.io \"{crd}\" is invalid: {field}: Required value"
    )]
    Required { crd: String, field: String },
    #[error(
        "CustomResourceDefinition.apiextensions.k8s.io \"{crd}\" is invalid: metadata.name: Invalid value: \"{crd}\": must be spec.names.plural+\".\"+spec.group"
    )]
    Name { crd: String },
    #[error(
        "CustomResourceDefinition.apiextensions.k8s.io \"{crd}\" is invalid: spec.versions: Invalid value: must have exactly one version marked as storage version"
    )]
    StorageVersions { crd: String },
    #[error(
        "CustomResourceDefinition.apiextensions.k8s.io \"{crd}\" is invalid: spec.preserveUnknownFields: Invalid value: true: must be false in order to use defaults in the schema"
    )]
    PreserveUnknownFields { crd: String },
    #[error(
        "CustomResourceDefinition.apiextensions.k8s.io \"{crd}\" is invalid: spec.versions[{index}].schema.openAPIV3Schema{source}"
    )]
    Schema {
        crd: String,
        index: usize,
        source: SchemaError,
    },
    /// A version the CRD does not serve: the real server has no such resource.
    #[error("the server could not find the requested resource")]
    NotServed,
}

impl CrdError {
    /// The answer: `422 Invalid` for a refused CRD, `404 NotFound` for a version not served.
    pub(crate) fn response(&self) -> Response {
        match self {
            Self::NotServed => status(StatusCode::NOT_FOUND, "NotFound", self.to_string()),
            _ => status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                self.to_string(),
            ),
        }
    }
}

/// Checks a CRD as the real server does before storing it, as far as this server uses it: its
/// name, group, plural, versions, one storage version, and each version's schema structural.
pub(crate) fn validate(crd: &Value) -> Result<(), CrdError> {
    let name = crd["metadata"]["name"].as_str().unwrap_or("").to_string();
    let required = |field: &str| CrdError::Required {
        crd: name.clone(),
        field: field.into(),
    };
    let group = crd["spec"]["group"]
        .as_str()
        .filter(|g| !g.is_empty())
        .ok_or_else(|| required("spec.group"))?;
    let plural = crd["spec"]["names"]["plural"]
        .as_str()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| required("spec.names.plural"))?;
    if name != format!("{plural}.{group}") {
        return Err(CrdError::Name { crd: name });
    }
    if crd["spec"]["preserveUnknownFields"] == true {
        return Err(CrdError::PreserveUnknownFields { crd: name });
    }
    let versions = crd["spec"]["versions"]
        .as_array()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| required("spec.versions"))?;
    if versions.iter().filter(|v| v["storage"] == true).count() != 1 {
        return Err(CrdError::StorageVersions { crd: name });
    }
    for (index, version) in versions.iter().enumerate() {
        if version["name"].as_str().is_none_or(str::is_empty) {
            return Err(required(&format!("spec.versions[{index}].name")));
        }
        structural(&name, index, version)?;
    }
    Ok(())
}

fn structural(crd: &str, index: usize, version: &Value) -> Result<Structural, CrdError> {
    let schema = &version["schema"]["openAPIV3Schema"];
    if schema.is_null() {
        return Err(CrdError::Required {
            crd: crd.into(),
            field: format!("spec.versions[{index}].schema.openAPIV3Schema"),
        });
    }
    Structural::served(schema, "").map_err(|source| CrdError::Schema {
        crd: crd.into(),
        index,
        source,
    })
}

/// The schema the stored CRDs give `collection`'s objects: `Ok(None)` when no CRD defines its
/// group and plural (a built-in, or a custom resource without its CRD: stored as sent),
/// `Err(NotServed)` when one does but does not serve that version.
pub(crate) fn schema_for(
    store: &Store,
    collection: &Collection,
) -> Result<Option<Structural>, CrdError> {
    let Some((group, version)) = collection.api.split_once('/') else {
        return Ok(None);
    };
    let crds = store.objects.get(&Collection {
        api: CRD_API.into(),
        plural: CRD_PLURAL.into(),
    });
    let Some(crd) = crds.into_iter().flat_map(|c| c.values()).find(|crd| {
        crd["spec"]["group"] == group && crd["spec"]["names"]["plural"] == collection.plural
    }) else {
        return Ok(None);
    };
    let name = crd["metadata"]["name"].as_str().unwrap_or("");
    let versions = crd["spec"]["versions"].as_array().into_iter().flatten();
    let Some((index, served)) = versions
        .enumerate()
        .find(|(_, v)| v["name"] == version && v["served"] == true)
    else {
        return Err(CrdError::NotServed);
    };
    structural(name, index, served).map(Some)
}

/// The status the real server's controllers give an accepted CRD (`pkg/controller/status`,
/// `establish` and `finalizer` in apiextensions-apiserver, here at once): `acceptedNames` (the
/// names, `singular` and `listKind` defaulted as `SetDefaults_CustomResourceDefinitionSpec`
/// does), `NamesAccepted` and `Established` true, `storedVersions` growing with each storage
/// version (`previous`: the status stored before).
pub(crate) fn with_status(mut crd: Value, previous: Option<&Value>) -> Value {
    let mut names = crd["spec"]["names"].clone();
    let kind = names["kind"].as_str().unwrap_or("").to_string();
    if names["singular"].as_str().is_none_or(str::is_empty) {
        names["singular"] = json!(kind.to_lowercase());
    }
    if names["listKind"].as_str().is_none_or(str::is_empty) {
        names["listKind"] = json!(format!("{kind}List"));
    }
    let mut stored: Vec<Value> = previous
        .and_then(|p| p["status"]["storedVersions"].as_array().cloned())
        .unwrap_or_default();
    let storage = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["storage"] == true)
        .map(|v| v["name"].clone());
    if let Some(storage) = storage
        && !stored.contains(&storage)
    {
        stored.push(storage);
    }
    let condition = |type_: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": "True", "reason": reason, "message": message,
               "lastTransitionTime": super::times::now_seconds()})
    };
    let keep_time = |mut c: Value| {
        let earlier = previous
            .and_then(|p| p["status"]["conditions"].as_array())
            .and_then(|cs| {
                cs.iter()
                    .find(|e| e["type"] == c["type"] && e["status"] == "True")
            });
        if let Some(earlier) = earlier {
            c["lastTransitionTime"] = earlier["lastTransitionTime"].clone();
        }
        c
    };
    crd["status"] = json!({
        "acceptedNames": names,
        "conditions": [
            keep_time(condition("NamesAccepted", "NoConflicts", "no conflicts found")),
            keep_time(condition("Established", "InitialNamesAccepted", "the initial names have been accepted")),
        ],
        "storedVersions": stored,
    });
    crd
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The shipped CRD with `change` made to it, and the message the server refuses it with.
    #[test]
    fn a_crd_the_real_server_refuses_is_refused_naming_the_field() {
        let prefix =
            "CustomResourceDefinition.apiextensions.k8s.io \"pullsets.pullgate.io\" is invalid: ";
        let cases: [(fn(&mut Value), &str); 6] = [
            (|c| c["metadata"]["name"] = json!("pullsets.other.io"), ""),
            (
                |c| c["spec"]["versions"][0]["storage"] = json!(false),
                "spec.versions: Invalid value: must have exactly one version marked as storage version",
            ),
            (
                |c| c["spec"]["preserveUnknownFields"] = json!(true),
                "spec.preserveUnknownFields: Invalid value: true: must be false in order to use defaults in the schema",
            ),
            (
                |c| c["spec"]["versions"][0]["schema"] = json!({}),
                "spec.versions[0].schema.openAPIV3Schema: Required value",
            ),
            (
                |c| c["spec"]["versions"] = json!([]),
                "spec.versions: Required value",
            ),
            (
                |c| {
                    c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["nullable"] =
                        json!(1)
                },
                "spec.versions[0].schema.openAPIV3Schema.properties[spec].nullable: must be a boolean",
            ),
        ];
        assert_eq!(validate(&crate::apiserver::objects::pullset_crd()), Ok(()));
        for (change, message) in cases {
            let mut crd = crate::apiserver::objects::pullset_crd();
            change(&mut crd);
            let refused = validate(&crd).unwrap_err().to_string();
            if message.is_empty() {
                assert!(
                    refused.contains("must be spec.names.plural+\".\"+spec.group"),
                    "{refused}"
                );
            } else {
                assert_eq!(refused, format!("{prefix}{message}"));
            }
        }
    }
}
