use super::*;
use secrecy::ExposeSecret;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn b64_unpadded(s: &str) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(s)
}

type Got = Result<Vec<(String, String, String)>, String>;

fn parsed(format: DockerConfigFormat, json: &str) -> Got {
    parse(format, json.as_bytes())
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    (
                        e.key.clone(),
                        e.username.clone(),
                        e.password.expose_secret().to_string(),
                    )
                })
                .collect()
        })
        .map_err(|e| format!("{e:?}"))
}

fn ok(entries: &[(&str, &str, &str)]) -> Got {
    Ok(entries
        .iter()
        .map(|(k, u, p)| (k.to_string(), u.to_string(), p.to_string()))
        .collect())
}

#[test]
fn entries_table() {
    use DockerConfigFormat::*;
    let padded = b64("alice:s3cr:et"); // 13 bytes: ends with '='
    assert!(padded.ends_with('='));
    let unpadded = b64_unpadded("alice:s3cr:et");
    let cases: Vec<(DockerConfigFormat, String, Got)> = vec![
        (ConfigJson, r#"{"auths":{"r.io":{"username":"u","password":"p"}}}"#.into(), ok(&[("r.io", "u", "p")])),
        // auth overrides username/password and splits at the first colon.
        (ConfigJson, format!(r#"{{"auths":{{"r.io":{{"username":"u","password":"p","auth":"{padded}"}}}}}}"#), ok(&[("r.io", "alice", "s3cr:et")])),
        // Unpadded base64 is read too (RawStdEncoding when it does not end in '=').
        (ConfigJson, format!(r#"{{"auths":{{"r.io":{{"auth":"{unpadded}"}}}}}}"#), ok(&[("r.io", "alice", "s3cr:et")])),
        // Padding where none is expected and vice versa.
        (ConfigJson, format!(r#"{{"auths":{{"r.io":{{"auth":"{}="}}}}}}"#, b64_unpadded("ab:c")), Err("AuthNotBase64".into())),
        // An empty password after the colon is a valid entry.
        (ConfigJson, format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64("user:")), ok(&[("r.io", "user", "")])),
        // email, identitytoken and registrytoken are ignored.
        (ConfigJson, r#"{"auths":{"r.io":{"username":"u","password":"p","email":"e@x","identitytoken":"t","registrytoken":"r"}}}"#.into(), ok(&[("r.io", "u", "p")])),
        // Field names match case-insensitively, as in Go.
        (ConfigJson, r#"{"Auths":{"r.io":{"Username":"u","PASSWORD":"p"}}}"#.into(), ok(&[("r.io", "u", "p")])),
        // Several entries come back in key order.
        (ConfigJson, r#"{"auths":{"z.io":{"username":"z"},"a.io":{"username":"a"}}}"#.into(), ok(&[("a.io", "a", ""), ("z.io", "z", "")])),
        // Legacy dockercfg is a bare map.
        (Cfg, format!(r#"{{"https://r.io/v1/":{{"auth":"{padded}","email":"e@x"}}}}"#), ok(&[("https://r.io/v1/", "alice", "s3cr:et")])),
        // A dockercfg map read as .dockerconfigjson has no `auths`: nothing, like the kubelet.
        (ConfigJson, r#"{"r.io":{"username":"u","password":"p"}}"#.into(), ok(&[])),
        (ConfigJson, r#"{"auths":null}"#.into(), ok(&[])),
        (ConfigJson, r#"{"auths":{}}"#.into(), ok(&[])),
        // An empty auth falls back to username/password.
        (ConfigJson, r#"{"auths":{"r.io":{"auth":"","username":"u","password":"p"}}}"#.into(), ok(&[("r.io", "u", "p")])),
        // What the kubelet rejects, failing the pull.
        (ConfigJson, r#"{"auths":{"r.io":{"auth":"!!!"}}}"#.into(), Err("AuthNotBase64".into())),
        (ConfigJson, format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64("nocolon")), Err("AuthNoColon".into())),
        (ConfigJson, "not json".into(), Err("NotJson".into())),
        (ConfigJson, "[1,2]".into(), Err("NotAnObject".into())),
        (ConfigJson, r#"{"auths":["r.io"]}"#.into(), Err("NotAnObject".into())),
        (ConfigJson, r#"{"auths":{"r.io":"u:p"}}"#.into(), Err("NotAnObject".into())),
        (ConfigJson, r#"{"auths":{"r.io":{"password":12345}}}"#.into(), Err("NotAString".into())),
        (Cfg, r#"{"r.io":{"email":true}}"#.into(), Err("NotAString".into())),
        (Cfg, "[]".into(), Err("NotAnObject".into())),
    ];
    for (format, json, expected) in cases {
        let got = parsed(format, &json);
        match (&got, &expected) {
            (Err(g), Err(e)) => assert!(g.starts_with(e.as_str()), "{json}: got {g}"),
            _ => assert_eq!(got, expected, "{json}"),
        }
    }
}

#[test]
fn identity_tokens_are_kept_for_expiry_only() {
    let entries = parse(
        DockerConfigFormat::ConfigJson,
        br#"{"auths":{"r.io":{"username":"u","password":"p","identitytoken":"tok"}}}"#,
    )
    .unwrap();
    assert_eq!(
        entries[0]
            .identity_token
            .as_ref()
            .map(|t| t.expose_secret().to_string())
            .as_deref(),
        Some("tok")
    );
}

#[test]
fn errors_never_carry_values() {
    let secret = "hunter2-secret-value";
    for json in [
        format!(r#"{{"auths":{{"r.io":{{"auth":"{secret}"}}}}}}"#),
        format!(r#"{{"auths":{{"r.io":{{"password":{secret}}}}}}}"#),
        format!(r#"{{"auths":{{"r.io":{{"password":"{secret}"}} broken"#),
        format!(r#"{{"auths":{{"r.io":"{secret}"}}}}"#),
        format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64(secret)),
    ] {
        let err = parse(DockerConfigFormat::ConfigJson, json.as_bytes()).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    }
    let ok = parse(
        DockerConfigFormat::ConfigJson,
        format!(r#"{{"auths":{{"r.io":{{"username":"u","password":"{secret}","identitytoken":"{secret}"}}}}}}"#).as_bytes(),
    )
    .unwrap();
    assert!(!format!("{ok:?}").contains("hunter2"));
}
