//! From a connection Secret's data to a [`ConnInfo`]: either a full libpq URI
//! (`uriKey`, e.g. CloudNativePG's `fqdn-uri`) or individual keys. The
//! values go into the client configuration field by field, so a password
//! with `@`, `/` or quotes needs no escaping.

use std::collections::BTreeMap;

use super::conninfo::{ConnInfo, RootCert, SslMode};
use crate::api::ConnectionSecretRef;

/// The Secret cannot produce a connection. Messages name keys, never values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret {secret} has no key {key:?}")]
    MissingKey { secret: String, key: String },
    #[error("secret {secret}: key {key:?} is not UTF-8")]
    NotUtf8 { secret: String, key: String },
    #[error("secret {secret}: key {key:?} is not a valid port")]
    BadPort { secret: String, key: String },
    #[error("secret {secret}: {problem}")]
    Invalid { secret: String, problem: String },
}

impl SecretError {
    pub fn reason(&self) -> &'static str {
        crate::reason::SECRET_INVALID
    }
}

/// Reads the connection described by `reference` out of `data` (the Secret's
/// decoded values). `secret` names it in errors (`namespace/name`).
pub fn conninfo_from_secret(
    secret: &str,
    data: &BTreeMap<String, Vec<u8>>,
    reference: &ConnectionSecretRef,
) -> Result<ConnInfo, SecretError> {
    let values = SecretValues { secret, data };
    let mut info = match &reference.uri_key {
        Some(uri_key) => values
            .required(uri_key)?
            .parse::<ConnInfo>()
            .map_err(|e| values.invalid(format!("key {uri_key:?}: {e}")))?,
        None => values.connection_from_keys(reference)?,
    };
    refuse_local(&values, &info)?;
    if let Some(ca_key) = &reference.ca_cert_key {
        info.root_cert = Some(RootCert::Pem(values.required(ca_key)?.into_bytes()));
    }
    if info.config.get_application_name().is_none() {
        info.config.application_name("db-query-operator");
    }
    Ok(info)
}

/// Files and sockets are the operator's, not the Secret author's.
fn refuse_local(values: &SecretValues<'_>, info: &ConnInfo) -> Result<(), SecretError> {
    if matches!(info.root_cert, Some(RootCert::File(_))) {
        return Err(values.invalid(
            "sslrootcert names a file on the operator's filesystem, which is not supported: \
             put the CA bundle in the Secret and name its key in caCertKey \
             (or use sslrootcert=system)",
        ));
    }
    let unix =
        |h: &tokio_postgres::config::Host| matches!(h, tokio_postgres::config::Host::Unix(_));
    if info.config.get_hosts().iter().any(unix) {
        return Err(values.invalid(
            "the host is a Unix socket path on the operator's filesystem; give a TCP host name",
        ));
    }
    Ok(())
}

/// A Secret's values, read as text; errors name the Secret and the key,
/// never a value.
struct SecretValues<'a> {
    secret: &'a str,
    data: &'a BTreeMap<String, Vec<u8>>,
}

impl SecretValues<'_> {
    fn text(&self, key: &str) -> Result<Option<String>, SecretError> {
        match self.data.get(key) {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes.clone())
                // Values written with `echo` into a Secret end in a newline.
                .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_owned()))
                .map_err(|_| SecretError::NotUtf8 {
                    secret: self.secret.to_owned(),
                    key: key.to_owned(),
                }),
        }
    }

    fn required(&self, key: &str) -> Result<String, SecretError> {
        self.text(key)?.ok_or_else(|| SecretError::MissingKey {
            secret: self.secret.to_owned(),
            key: key.to_owned(),
        })
    }

    fn invalid(&self, problem: impl Into<String>) -> SecretError {
        SecretError::Invalid { secret: self.secret.to_owned(), problem: problem.into() }
    }

    /// The connection from one key per part (host, port, user, ...).
    fn connection_from_keys(
        &self,
        reference: &ConnectionSecretRef,
    ) -> Result<ConnInfo, SecretError> {
        let key = |custom: &Option<String>, default: &'static str| {
            custom.clone().unwrap_or_else(|| default.to_owned())
        };
        let mut config = tokio_postgres::Config::new();
        config.host(&self.required(&key(&reference.host_key, "host"))?);
        let port_key = key(&reference.port_key, "port");
        if let Some(port) = self.text(&port_key)? {
            let port = port.trim().parse::<u16>().map_err(|_| SecretError::BadPort {
                secret: self.secret.to_owned(),
                key: port_key.clone(),
            })?;
            config.port(port);
        }
        config.user(&self.required(&key(&reference.user_key, "username"))?);
        if let Some(password) = self.text(&key(&reference.password_key, "password"))? {
            config.password(password);
        }
        config.dbname(&self.required(&key(&reference.db_name_key, "dbname"))?);
        let ssl_mode_key = key(&reference.ssl_mode_key, "sslmode");
        let ssl_mode = match self.text(&ssl_mode_key)? {
            Some(mode) => mode
                .trim()
                .parse::<SslMode>()
                .map_err(|e| self.invalid(format!("key {ssl_mode_key:?}: {e}")))?,
            None => SslMode::Prefer,
        };
        Ok(ConnInfo { config, ssl_mode, root_cert: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> ConnectionSecretRef {
        serde_json::from_value(serde_json::json!({"name": "db"})).unwrap()
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn individual_keys_with_defaults_and_overrides() {
        let d = data(&[
            ("host", "db.local\n"),
            ("port", "6432"),
            ("username", "app"),
            ("password", "p@ss/w:rd'\""),
            ("dbname", "main"),
        ]);
        let info = conninfo_from_secret("ns/db", &d, &reference()).unwrap();
        assert_eq!(info.config.get_ports(), &[6432]);
        assert_eq!(info.config.get_password(), Some(&b"p@ss/w:rd'\""[..]));
        assert_eq!(info.ssl_mode, SslMode::Prefer);
        assert_eq!(info.config.get_application_name(), Some("db-query-operator"));

        let mut r = reference();
        r.user_key = Some("user".into());
        r.ssl_mode_key = Some("mode".into());
        r.ca_cert_key = Some("ca.crt".into());
        let d = data(&[
            ("host", "h"),
            ("user", "u"),
            ("dbname", "d"),
            ("mode", "verify-full"),
            ("ca.crt", "PEM"),
        ]);
        let info = conninfo_from_secret("ns/db", &d, &r).unwrap();
        assert_eq!(info.config.get_user(), Some("u"));
        assert_eq!(info.ssl_mode, SslMode::VerifyFull);
        assert_eq!(info.root_cert, Some(RootCert::Pem(b"PEM".to_vec())));
    }

    #[test]
    fn uri_key_wins_and_keeps_parameters() {
        let mut r = reference();
        r.uri_key = Some("fqdn-uri".into());
        let d = data(&[("fqdn-uri", "postgresql://app:s%40cret@pg-rw.db.svc:5432/app?sslmode=require&application_name=mine"), ("host", "ignored")]);
        let info = conninfo_from_secret("ns/db", &d, &r).unwrap();
        assert_eq!(info.ssl_mode, SslMode::Require);
        assert_eq!(info.config.get_password(), Some(&b"s@cret"[..]));
        assert_eq!(info.config.get_application_name(), Some("mine"));
    }

    #[test]
    fn problems_name_the_key_not_the_value() {
        let err =
            conninfo_from_secret("ns/db", &data(&[("host", "h"), ("username", "u")]), &reference())
                .unwrap_err();
        assert_eq!(err.to_string(), "secret ns/db has no key \"dbname\"");
        let d = data(&[("host", "h"), ("username", "u"), ("dbname", "d"), ("port", "secret-ish")]);
        let err = conninfo_from_secret("ns/db", &d, &reference()).unwrap_err();
        assert!(!err.to_string().contains("secret-ish"), "{err}");
    }

    #[test]
    fn a_value_mapped_onto_any_key_never_shows_in_the_error() {
        const MARKER: &str = "m4rker-value";
        let mut d = data(&[("host", "h"), ("username", "u"), ("dbname", "d")]);
        d.insert("token".into(), MARKER.as_bytes().to_vec());
        for field in ["sslModeKey", "portKey", "uriKey"] {
            let mut r = serde_json::json!({"name": "db"});
            r[field] = "token".into();
            let r: ConnectionSecretRef = serde_json::from_value(r).unwrap();
            let err = conninfo_from_secret("ns/db", &d, &r).unwrap_err();
            assert!(!err.to_string().contains(MARKER), "{field}: {err}");
        }
    }

    #[test]
    fn files_and_sockets_of_the_operator_are_refused() {
        let mut r = reference();
        r.uri_key = Some("uri".into());
        for uri in [
            "postgresql://u@h/d?sslrootcert=/dev/zero&sslmode=verify-full",
            "postgresql://u@h/d?sslkey=/etc/ssl/private/key.pem",
            "host=/var/run/postgresql user=u dbname=d",
        ] {
            let err = conninfo_from_secret("ns/db", &data(&[("uri", uri)]), &r).unwrap_err();
            assert_eq!(err.reason(), "SecretInvalid");
            assert!(err.to_string().contains("operator's filesystem"), "{uri}: {err}");
        }
        let ok = "postgresql://u@h/d?sslrootcert=system&sslmode=verify-full";
        assert!(conninfo_from_secret("ns/db", &data(&[("uri", ok)]), &r).is_ok());
    }
}
