//! [`Session`] on MySQL and MariaDB: `mysql_async`, one admin connection
//! (GRANTs name the database, so nothing runs inside it), holding a slot of
//! the server's connection budget. The session runs in
//! `NO_BACKSLASH_ESCAPES` mode, which the driver's literal escaping is told.

use std::{collections::BTreeSet, time::Duration};

use mysql_async::{prelude::Queryable, Conn, OptsBuilder, SslOpts};

use super::adopt::Found;
use super::error::{statement_kind, ServerError};
use super::request::Request;
use super::session::{Claimant, ServerFacts, ServerObjects, Session};
use super::sql;
use crate::api::server::Engine;
use crate::db::{ConnInfo, ConnectError, ConnectionBudget, RootCert, ServerKey, Slot, SslMode};

pub struct MySession {
    /// Taken only by `drop`, which closes it.
    conn: Option<Conn>,
    slot: Option<Slot>,
    records_ready: bool,
}

impl Drop for MySession {
    /// Closes the connection before its budget slot is given back, so the
    /// budget counts connections the server still sees.
    fn drop(&mut self) {
        if let (Some(conn), Some(slot)) = (self.conn.take(), self.slot.take()) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = conn.disconnect().await;
                    drop(slot);
                });
            }
        }
    }
}

/// The TLS options libpq's `sslmode` stands for, on MySQL: `disable` and
/// `prefer` connect in plain text (`prefer` first tries TLS), `require`
/// encrypts without verifying, `verify-ca` checks the chain, `verify-full`
/// the chain and the host name.
/// TLS as libpq's sslmode defines it, the same rules as the PostgreSQL
/// side (`db::connect`): `prefer` verifies nothing; `require` verifies the
/// chain when a CA is given; `verify-ca` needs a CA and checks the chain,
/// `verify-full` the host name too; `sslrootcert=system` (every public CA)
/// only with the host name check.
fn ssl_opts(info: &ConnInfo, mode: SslMode) -> Result<Option<SslOpts>, ServerError> {
    let unverified = || {
        SslOpts::default()
            .with_danger_accept_invalid_certs(true)
            .with_danger_skip_domain_validation(true)
    };
    Ok(match (mode, &info.root_cert) {
        (SslMode::Disable, _) => None,
        (SslMode::Prefer, _) | (SslMode::Require, None) => Some(unverified()),
        (SslMode::VerifyFull, Some(RootCert::System)) => Some(SslOpts::default()),
        (mode, Some(RootCert::System)) => {
            return Err(ConnectError::WeakModeWithSystemRoots(mode.as_str()).into())
        }
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(ConnectError::RootCertRequired(mode.as_str()).into())
        }
        (mode, Some(root)) => {
            let roots = match root {
                RootCert::Pem(pem) => vec![pem.clone().into()],
                RootCert::File(path) => vec![std::path::PathBuf::from(path).into()],
                RootCert::System => unreachable!("handled above"),
            };
            let opts = SslOpts::default().with_root_certs(roots);
            Some(if mode == SslMode::VerifyFull {
                opts
            } else {
                opts.with_danger_skip_domain_validation(true)
            })
        }
    })
}

/// Connects as the admin, within the budget (waiting at most `wait` for a slot).
pub async fn connect(
    info: &ConnInfo,
    budget: &ConnectionBudget,
    wait: Duration,
    connect_timeout: Duration,
) -> Result<MySession, ServerError> {
    let config = &info.config;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => return Err(ServerError::Unreachable("no TCP host in the Secret".into())),
    };
    let port = config.get_ports().first().copied().unwrap_or(3306);
    let user = config.get_user().unwrap_or_default().to_owned();
    let password = config.get_password().map(|p| String::from_utf8_lossy(p).into_owned());
    let key = ServerKey { host: host.clone(), port, dbname: String::new(), user: user.clone() };
    let slot = budget.server(&key).acquire(wait).await.ok_or(ServerError::Budget)?;
    let mode = info.effective_ssl_mode();
    let opts = |ssl: Option<SslOpts>| {
        OptsBuilder::default()
            .ip_or_hostname(host.clone())
            .tcp_port(port)
            .user(Some(user.clone()))
            .pass(password.clone())
            .prefer_socket(false)
            .ssl_opts(ssl)
            .init(vec![sql::MY_SESSION])
    };
    let attempt = |ssl| {
        let opts = opts(ssl);
        async move {
            tokio::time::timeout(connect_timeout, Conn::new(opts))
                .await
                .map_err(|_| ServerError::Unreachable("timed out".into()))
        }
    };
    let conn =
        match attempt(ssl_opts(info, mode)?).await? {
            // libpq's prefer: TLS when the server offers it, plain text only
            // when it does not (never after another failure).
            Err(mysql_async::Error::Driver(
                mysql_async::DriverError::NoClientSslFlagFromServer,
            )) if mode == SslMode::Prefer => attempt(None).await?.map_err(|e| connect_error(&e))?,
            other => other.map_err(|e| connect_error(&e))?,
        };
    Ok(MySession { conn: Some(conn), slot: Some(slot), records_ready: false })
}

fn connect_error(e: &mysql_async::Error) -> ServerError {
    match e {
        // 1045: access denied (wrong user or password), 1044: to the
        // database. The message quotes the user and host, which came from
        // the admin Secret: the code says enough.
        mysql_async::Error::Server(s) if s.code == 1045 || s.code == 1044 => {
            ServerError::Authentication(format!(
                "MySQL error {}: access denied (the message is not shown, it quotes the user name)",
                s.code
            ))
        }
        mysql_async::Error::Server(s) => {
            ServerError::Unreachable(format!("MySQL error {}", s.code))
        }
        // Driver and I/O errors name no value of the Secret.
        other => ServerError::Unreachable(other.to_string()),
    }
}

/// A statement's failure: the server's error code, and its message only
/// when the statement carried no password (syntax errors quote the text).
fn failed(what: &str, e: &mysql_async::Error, quote_message: bool) -> ServerError {
    let message = match e {
        mysql_async::Error::Server(s) if quote_message => {
            format!("MySQL error {}: {}", s.code, s.message)
        }
        mysql_async::Error::Server(s) => format!("MySQL error {}", s.code),
        other => other.to_string(),
    };
    ServerError::Statement { what: what.to_owned(), message }
}

impl MySession {
    fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("open until dropped")
    }

    /// The privileges the user holds on its database (the grant's pattern,
    /// `_` escaped, or the plain name), `GRANT OPTION` among them when
    /// grantable: only those this operator knows of (a newer server's
    /// `ALL` holds more).
    async fn held(&mut self, request: &Request) -> Result<BTreeSet<String>, ServerError> {
        let grantee = format!("'{}'@'%'", request.username);
        let pattern = request.database.replace('_', "\\_");
        let rows: Vec<(String, String)> = self
            .conn()
            .exec(
                "SELECT PRIVILEGE_TYPE, IS_GRANTABLE FROM information_schema.SCHEMA_PRIVILEGES \
                 WHERE GRANTEE = ? AND TABLE_SCHEMA IN (?, ?)",
                (&grantee, &pattern, &request.database),
            )
            .await
            .map_err(|e| failed("reading the user's privileges", &e, true))?;
        let mut held: BTreeSet<String> = rows
            .iter()
            .map(|(privilege, _)| privilege.clone())
            .filter(|p| super::request::MYSQL_PRIVILEGES.contains(&p.as_str()))
            .collect();
        if rows.iter().any(|(_, grantable)| grantable == "YES") {
            held.insert(sql::GRANT_OPTION.to_owned());
        }
        Ok(held)
    }

    async fn ensure_records(&mut self) -> Result<(), ServerError> {
        if self.records_ready {
            return Ok(());
        }
        let exists: Option<u64> = self
            .conn()
            .query_first(
                "SELECT COUNT(*) FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = 'dbqo' AND TABLE_NAME = 'ownership'",
            )
            .await
            .map_err(|e| failed("reading the ownership records", &e, true))?;
        if exists.unwrap_or(0) == 0 {
            for statement in sql::create_records(Engine::Mariadb) {
                self.conn()
                    .query_drop(statement)
                    .await
                    .map_err(|e| failed("creating the ownership records", &e, true))?;
            }
        }
        self.records_ready = true;
        Ok(())
    }
}

/// One row of `observe`: database count, user count, the owners recorded
/// for each, the privileges recorded.
type ObservedRow = (u64, u64, Option<String>, Option<String>, Option<String>);

impl Session for MySession {
    async fn facts(&mut self) -> Result<ServerFacts, ServerError> {
        let version: Option<String> = self
            .conn()
            .query_first("SELECT VERSION()")
            .await
            .map_err(|e| failed("reading the server's version", &e, true))?;
        // The admin's global privileges and whether it may grant them.
        let rows: Vec<(String, String)> = self
            .conn()
            .query(
                "SELECT PRIVILEGE_TYPE, IS_GRANTABLE FROM information_schema.USER_PRIVILEGES \
                 WHERE GRANTEE = CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', \
                 SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')",
            )
            .await
            .map_err(|e| failed("reading the admin's privileges", &e, true))?;
        let has = |p: &str| rows.iter().any(|(name, _)| name == p);
        let mut missing_rights = Vec::new();
        for needed in ["CREATE USER", "CREATE"] {
            if !has(needed) {
                missing_rights.push(needed.to_owned());
            }
        }
        if !rows.iter().any(|(_, grantable)| grantable == "YES") {
            missing_rights.push("GRANT OPTION".to_owned());
        }
        Ok(ServerFacts { version: version.unwrap_or_default(), missing_rights })
    }

    async fn observe(&mut self, request: &Request) -> Result<ServerObjects, ServerError> {
        self.ensure_records().await?;
        let row: Option<ObservedRow> = self
            .conn()
            .exec_first(
                "SELECT \
                   (SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?), \
                   (SELECT COUNT(*) FROM mysql.user WHERE User = ? AND Host = '%'), \
                   (SELECT owner_uid FROM dbqo.ownership WHERE object = 'database' AND name = ?), \
                   (SELECT owner_uid FROM dbqo.ownership WHERE object = 'user' AND name = ?), \
                   (SELECT privileges FROM dbqo.ownership WHERE object = 'database' AND name = ?)",
                (
                    &request.database,
                    &request.username,
                    &request.database,
                    &request.username,
                    &request.database,
                ),
            )
            .await
            .map_err(|e| failed("reading the database and the user", &e, true))?;
        let (db, user, db_owner, user_owner, privileges) = row.unwrap_or_default();
        Ok(ServerObjects {
            database: Found { exists: db > 0, recorded_owner: db_owner },
            user: Found { exists: user > 0, recorded_owner: user_owner },
            privileges,
        })
    }

    async fn claim(
        &mut self,
        request: &Request,
        claimant: &Claimant,
    ) -> Result<ServerObjects, ServerError> {
        self.ensure_records().await?;
        self.conn()
            .exec_drop(
                "INSERT IGNORE INTO dbqo.ownership (object, name, owner_uid, owner) \
                 VALUES ('database', ?, ?, ?), ('user', ?, ?, ?)",
                (
                    &request.database,
                    &claimant.uid,
                    &claimant.name,
                    &request.username,
                    &claimant.uid,
                    &claimant.name,
                ),
            )
            .await
            .map_err(|e| failed("recording ownership", &e, true))?;
        self.observe(request).await
    }

    async fn execute(&mut self, statements: &[String]) -> Result<(), ServerError> {
        for statement in statements {
            let kind = statement_kind(statement);
            let carries_password = statement.contains(" IDENTIFIED BY ");
            self.conn()
                .query_drop(statement)
                .await
                .map_err(|e| failed(&kind, &e, !carries_password))?;
        }
        Ok(())
    }

    async fn execute_inside(
        &mut self,
        _request: &Request,
        statements: &[String],
    ) -> Result<(), ServerError> {
        self.execute(statements).await
    }

    async fn missing_extensions(&mut self, _request: &Request) -> Result<Vec<String>, ServerError> {
        Ok(Vec::new())
    }

    async fn privileges_as_asked(&mut self, request: &Request) -> Result<bool, ServerError> {
        Ok(self.held(request).await? == sql::my_wanted(request))
    }

    async fn grant(&mut self, request: &Request, _replace: bool) -> Result<(), ServerError> {
        let held = self.held(request).await?;
        self.execute(&sql::my_privilege_changes(request, &held)).await
    }

    async fn record_privileges(
        &mut self,
        request: &Request,
        text: &str,
    ) -> Result<(), ServerError> {
        self.conn()
            .exec_drop(
                "UPDATE dbqo.ownership SET privileges = ? WHERE object = 'database' AND name = ?",
                (text, &request.database),
            )
            .await
            .map_err(|e| failed("recording privileges", &e, true))
    }

    async fn forget(&mut self, request: &Request, uid: &str) -> Result<(), ServerError> {
        self.conn()
            .exec_drop(
                "DELETE FROM dbqo.ownership WHERE owner_uid = ? AND \
                 ((object = 'database' AND name = ?) OR (object = 'user' AND name = ?))",
                (uid, &request.database, &request.username),
            )
            .await
            .map_err(|e| failed("removing ownership records", &e, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(mode: &str, root: Option<RootCert>) -> ConnInfo {
        let mut info: ConnInfo =
            format!("postgresql://u:p@h:3306/d?sslmode={mode}").parse().unwrap();
        info.root_cert = root;
        info
    }

    /// (verifies the chain, checks the host name, roots given) per mode, as
    /// PostgreSQL's side does.
    fn verification(
        mode: &str,
        root: Option<RootCert>,
    ) -> Result<Option<(bool, bool, usize)>, String> {
        let info = info(mode, root);
        ssl_opts(&info, info.effective_ssl_mode())
            .map(|opts| {
                opts.map(|o| {
                    (!o.accept_invalid_certs(), !o.skip_domain_validation(), o.root_certs().len())
                })
            })
            .map_err(|e| e.reason().to_owned())
    }

    #[test]
    fn tls_follows_libpq_sslmode_rules() {
        let ca = || Some(RootCert::Pem(b"PEM".to_vec()));
        let system = || Some(RootCert::System);
        assert_eq!(verification("disable", ca()), Ok(None));
        assert_eq!(verification("prefer", None), Ok(Some((false, false, 0))));
        assert_eq!(
            verification("prefer", ca()),
            Ok(Some((false, false, 0))),
            "prefer ignores a CA"
        );
        assert_eq!(verification("require", None), Ok(Some((false, false, 0))));
        assert_eq!(verification("require", ca()), Ok(Some((true, false, 1))));
        assert_eq!(verification("verify-ca", ca()), Ok(Some((true, false, 1))));
        assert_eq!(verification("verify-full", ca()), Ok(Some((true, true, 1))));
        assert_eq!(verification("verify-full", system()), Ok(Some((true, true, 0))));
        // sslrootcert=system alone means verify-full, as in libpq 16.
        assert_eq!(verification("prefer", system()), Ok(Some((true, true, 0))));
        for weak in ["require", "verify-ca"] {
            assert_eq!(verification(weak, system()), Err("TlsConfigError".into()), "{weak}");
        }
        for needs_ca in ["verify-ca", "verify-full"] {
            assert_eq!(verification(needs_ca, None), Err("TlsConfigError".into()), "{needs_ca}");
        }
    }
}
