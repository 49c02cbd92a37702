//! The credentials Secret of a `Database`: its keys and its manifest.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};

use super::secret_template::{SecretTemplate, SecretTemplateError};
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
    /// The CA of the server's admin Secret (PEM), for `verify-ca`/`verify-full`.
    pub ca: Option<String>,
}

/// The key the password is kept under.
pub const PASSWORD_KEY: &str = "password";
/// The CA's key, as cert-manager and most clients name it.
pub const CA_KEY: &str = "ca.crt";
pub use super::secret_template::OPERATOR_KEYS as KEYS;

impl Credentials {
    /// The Secret's data: [`Credentials::fields`], `ca.crt` when there is a
    /// CA, and the keys of `template`.
    pub fn data(
        &self,
        template: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, SecretTemplateError> {
        let mut data = self.fields();
        if !template.is_empty() {
            data.extend(SecretTemplate::compile(template, KEYS)?.render(&data)?);
        }
        if let Some(ca) = &self.ca {
            data.insert(CA_KEY.to_owned(), ca.clone());
        }
        Ok(data)
    }

    /// `host` (and `hostname`, seed 004's name for it), `port`, `dbname`,
    /// `username`, `password`, `sslmode` and `uri`.
    pub fn fields(&self) -> BTreeMap<String, String> {
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
            ("hostname".to_owned(), self.host.clone()),
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
            ca: None,
        }
    }

    #[test]
    fn the_uri_survives_any_password() {
        let data = credentials(Engine::Postgres, "p@ss/w:rd'\"\\;%").fields();
        assert_eq!(
            data["uri"],
            "postgresql://orders:p%40ss%2Fw%3Ard%27%22%5C%3B%25@db.local:5432/orders?sslmode=require"
        );
        let parsed: crate::db::ConnInfo = data["uri"].parse().unwrap();
        assert_eq!(parsed.config.get_password(), Some("p@ss/w:rd'\"\\;%".as_bytes()));
        let my = credentials(Engine::Mariadb, "x").fields();
        assert_eq!(my["uri"], "mysql://orders:x@db.local:5432/orders");
        assert_eq!(data.len(), 8);
        assert_eq!(data["hostname"], data["host"]);
    }

    #[test]
    fn unchanged_compares_every_key() {
        let data = credentials(Engine::Postgres, "x").fields();
        let mut current: BTreeMap<String, Vec<u8>> =
            data.iter().map(|(k, v)| (k.clone(), v.as_bytes().to_vec())).collect();
        assert!(unchanged(&current, &data));
        current.insert("password".into(), b"y".to_vec());
        assert!(!unchanged(&current, &data));
    }

    #[test]
    fn data_adds_the_ca_and_the_templates_keys() {
        let mut c = credentials(Engine::Postgres, "pw");
        c.ca = Some("-----BEGIN CERTIFICATE-----".into());
        let template = BTreeMap::from([
            ("POSTGRES_URL".to_owned(), "{{uri}}".to_owned()),
            ("DB_HOST".to_owned(), "{{hostname}}".to_owned()),
        ]);
        let data = c.data(&template).unwrap();
        assert_eq!(data["ca.crt"], "-----BEGIN CERTIFICATE-----");
        assert_eq!(data["POSTGRES_URL"], data["uri"]);
        assert_eq!(data["DB_HOST"], "db.local");
        assert_eq!(data.len(), 11);
        let taken = BTreeMap::from([("ca.crt".to_owned(), "x".to_owned())]);
        assert!(c.data(&taken).is_err());
    }
}
