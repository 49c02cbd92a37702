//! The credentials Secret of a `Database`: its keys and its manifest.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};

use crate::api::server::Engine;

/// What an application needs to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub engine: Engine,
    pub host: String,
    pub port: u16,
    pub dbname: String,
    pub username: String,
    pub password: String,
    pub sslmode: String,
}

/// The key the password is kept under.
pub const PASSWORD_KEY: &str = "password";

impl Credentials {
    /// `host`, `port`, `dbname`, `username`, `password`, `sslmode` and `uri`.
    pub fn data(&self) -> BTreeMap<String, String> {
        let scheme = match self.engine {
            Engine::Postgres => "postgresql",
            _ => "mysql",
        };
        let mut uri = format!(
            "{scheme}://{}:{}@{}:{}/{}",
            encode(&self.username),
            encode(&self.password),
            host_in_uri(&self.host),
            self.port,
            encode(&self.dbname)
        );
        if self.engine == Engine::Postgres {
            uri.push_str(&format!("?sslmode={}", encode(&self.sslmode)));
        }
        BTreeMap::from([
            ("host".to_owned(), self.host.clone()),
            ("port".to_owned(), self.port.to_string()),
            ("dbname".to_owned(), self.dbname.clone()),
            ("username".to_owned(), self.username.clone()),
            (PASSWORD_KEY.to_owned(), self.password.clone()),
            ("sslmode".to_owned(), self.sslmode.clone()),
            ("uri".to_owned(), uri),
        ])
    }
}

/// An IPv6 address in a URI goes in brackets.
fn host_in_uri(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The credentials Secret as the adoption rules see it: ours when the
/// `Database` with `uid` owns it.
pub fn found(secret: Option<&crate::kube_api::SecretData>, uid: &str) -> super::adopt::SecretFound {
    use super::adopt::SecretFound;
    match secret {
        None => SecretFound::Absent,
        Some(s) if s.owners.iter().any(|o| o == uid) => SecretFound::Ours {
            password: s
                .data
                .get(PASSWORD_KEY)
                .and_then(|p| String::from_utf8(p.clone()).ok())
                .filter(|p| !p.is_empty()),
        },
        Some(_) => SecretFound::NotOurs,
    }
}

/// Whether a Secret already holds exactly `data` (then nothing is written).
pub fn unchanged(current: &BTreeMap<String, Vec<u8>>, data: &BTreeMap<String, String>) -> bool {
    current.len() == data.len()
        && data.iter().all(|(k, v)| current.get(k).map(Vec::as_slice) == Some(v.as_bytes()))
}

/// The Secret as applied: `stringData`-free (`data` base64), owned by the
/// `Database` (`owner`: apiVersion, kind, name, uid), labelled as the
/// operator's.
pub fn manifest(
    namespace: &str,
    name: &str,
    owner: &Json,
    data: &BTreeMap<String, String>,
) -> Json {
    use base64::Engine as _;
    let encoded: serde_json::Map<String, Json> = data
        .iter()
        .map(|(k, v)| {
            (k.clone(), Json::String(base64::engine::general_purpose::STANDARD.encode(v)))
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "db-query-operator"},
            "ownerReferences": [owner],
        },
        "type": "Opaque",
        "data": encoded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(engine: Engine, password: &str) -> Credentials {
        Credentials {
            engine,
            host: "db.local".into(),
            port: 5432,
            dbname: "orders".into(),
            username: "orders".into(),
            password: password.into(),
            sslmode: "require".into(),
        }
    }

    #[test]
    fn the_uri_survives_any_password() {
        let data = credentials(Engine::Postgres, "p@ss/w:rd'\"\\;%").data();
        assert_eq!(
            data["uri"],
            "postgresql://orders:p%40ss%2Fw%3Ard%27%22%5C%3B%25@db.local:5432/orders?sslmode=require"
        );
        let parsed: crate::db::ConnInfo = data["uri"].parse().unwrap();
        assert_eq!(parsed.config.get_password(), Some("p@ss/w:rd'\"\\;%".as_bytes()));
        let my = credentials(Engine::Mariadb, "x").data();
        assert_eq!(my["uri"], "mysql://orders:x@db.local:5432/orders");
        assert_eq!(data.len(), 7);
    }

    #[test]
    fn unchanged_compares_every_key() {
        let data = credentials(Engine::Postgres, "x").data();
        let mut current: BTreeMap<String, Vec<u8>> =
            data.iter().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect();
        assert!(unchanged(&current, &data));
        current.insert("password".into(), b"y".to_vec());
        assert!(!unchanged(&current, &data));
    }
}
