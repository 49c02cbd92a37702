//! From a `DatabaseServer`'s admin Secret to an open [`Session`] of the
//! right engine.

use std::collections::BTreeMap;
use std::time::Duration;

use super::error::ServerError;
use super::mysql::{self, MySession};
use super::postgres::{self, PgSession};
use super::request::Request;
use super::session::{Claimant, ServerFacts, ServerObjects, Session};
use crate::api::server::Engine;
use crate::api::ConnectionSecretRef;
use crate::db::{conninfo_from_secret, ConnInfo, ConnectionBudget, SecretError};

/// The admin connection in a Secret. MySQL Secrets may hold a `mysql://`
/// (or `mariadb://`) URI, read like a PostgreSQL one, and need no database.
pub fn admin_conninfo(
    engine: Engine,
    secret: &str,
    data: &BTreeMap<String, Vec<u8>>,
    reference: &ConnectionSecretRef,
) -> Result<ConnInfo, SecretError> {
    if !engine.is_mysql_family() {
        return conninfo_from_secret(secret, data, reference);
    }
    let mut data = data.clone();
    match &reference.uri_key {
        Some(key) => {
            if let Some(uri) = data.get_mut(key) {
                for scheme in [&b"mysql://"[..], b"mariadb://"] {
                    if uri.starts_with(scheme) {
                        let mut rewritten = b"postgresql://".to_vec();
                        rewritten.extend_from_slice(&uri[scheme.len()..]);
                        *uri = rewritten;
                    }
                }
            }
        }
        None => {
            let key = reference.db_name_key.as_deref().unwrap_or("dbname");
            data.entry(key.to_owned()).or_insert_with(|| b"mysql".to_vec());
        }
    }
    conninfo_from_secret(secret, &data, reference)
}

/// The admin connection's host: what applications use too, unless the
/// server names a client endpoint.
pub fn admin_host(info: &ConnInfo) -> String {
    match info.config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => String::new(),
    }
}

/// An admin session on either engine.
pub enum AnySession {
    Postgres(Box<PgSession>),
    Mysql(MySession),
}

/// Opens a session within the budget: waits at most `wait` for a slot and
/// `connect_timeout` for the server.
pub async fn open(
    engine: Engine,
    info: ConnInfo,
    budget: &ConnectionBudget,
    wait: Duration,
    connect_timeout: Duration,
) -> Result<AnySession, ServerError> {
    Ok(match engine {
        Engine::Postgres => {
            let mut info = info;
            info.config.connect_timeout(connect_timeout);
            AnySession::Postgres(Box::new(postgres::connect(info, budget, wait).await?))
        }
        Engine::Mysql | Engine::Mariadb => {
            AnySession::Mysql(mysql::connect(&info, budget, wait, connect_timeout).await?)
        }
    })
}

/// How long one admin round trip may take. Provisioning statements run
/// without a server-side timeout (`CREATE DATABASE` may wait for the
/// template database), so this client-side deadline is generous: it is
/// there for a server or network path that stopped answering, which would
/// otherwise hold the `Database`'s pass forever.
pub const ADMIN_ROUND_TRIP: Duration = Duration::from_secs(30);

/// Runs the call on either engine within [`ADMIN_ROUND_TRIP`].
macro_rules! delegate {
    ($self:ident, $s:ident => $call:expr) => {
        crate::db::within(ADMIN_ROUND_TRIP, async {
            match $self {
                AnySession::Postgres($s) => $call,
                AnySession::Mysql($s) => $call,
            }
        })
        .await
        .map_err(ServerError::from)?
    };
}

impl Session for AnySession {
    async fn facts(&mut self) -> Result<ServerFacts, ServerError> {
        delegate!(self, s => s.facts().await)
    }

    async fn observe(&mut self, request: &Request) -> Result<ServerObjects, ServerError> {
        delegate!(self, s => s.observe(request).await)
    }

    async fn claim(
        &mut self,
        request: &Request,
        claimant: &Claimant,
    ) -> Result<ServerObjects, ServerError> {
        delegate!(self, s => s.claim(request, claimant).await)
    }

    async fn execute(&mut self, statements: &[String]) -> Result<(), ServerError> {
        delegate!(self, s => s.execute(statements).await)
    }

    async fn execute_inside(
        &mut self,
        request: &Request,
        statements: &[String],
    ) -> Result<(), ServerError> {
        delegate!(self, s => s.execute_inside(request, statements).await)
    }

    async fn missing_extensions(&mut self, request: &Request) -> Result<Vec<String>, ServerError> {
        delegate!(self, s => s.missing_extensions(request).await)
    }

    async fn privileges_as_asked(&mut self, request: &Request) -> Result<bool, ServerError> {
        delegate!(self, s => s.privileges_as_asked(request).await)
    }

    async fn grant(&mut self, request: &Request, replace: bool) -> Result<(), ServerError> {
        delegate!(self, s => s.grant(request, replace).await)
    }

    async fn record_privileges(
        &mut self,
        request: &Request,
        text: &str,
    ) -> Result<(), ServerError> {
        delegate!(self, s => s.record_privileges(request, text).await)
    }

    async fn forget(&mut self, request: &Request, uid: &str) -> Result<(), ServerError> {
        delegate!(self, s => s.forget(request, uid).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(uri_key: Option<&str>) -> ConnectionSecretRef {
        let mut r = serde_json::json!({"name": "admin"});
        if let Some(k) = uri_key {
            r["uriKey"] = k.into();
        }
        serde_json::from_value(r).unwrap()
    }

    #[test]
    fn mysql_secrets_read_like_postgres_ones() {
        let data = BTreeMap::from([(
            "uri".to_owned(),
            b"mysql://root:p%40ss@127.0.0.1:3307/?sslmode=require".to_vec(),
        )]);
        let info =
            admin_conninfo(Engine::Mariadb, "ns/admin", &data, &reference(Some("uri"))).unwrap();
        assert_eq!(info.config.get_ports(), &[3307]);
        assert_eq!(info.config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(info.ssl_mode, crate::db::SslMode::Require);
        let keys = BTreeMap::from([
            ("host".to_owned(), b"127.0.0.1".to_vec()),
            ("username".to_owned(), b"root".to_vec()),
            ("password".to_owned(), b"x".to_vec()),
        ]);
        assert!(admin_conninfo(Engine::Mysql, "ns/admin", &keys, &reference(None)).is_ok());
        assert!(
            admin_conninfo(Engine::Postgres, "ns/admin", &keys, &reference(None)).is_err(),
            "PostgreSQL needs its dbname"
        );
    }
}
