//! [`Session`] on PostgreSQL: tokio-postgres, one admin connection in the
//! admin's database (where the ownership records live) and, when needed,
//! one inside the team's database; each holds a slot of the server's
//! connection budget.

use std::time::Duration;

use tokio_postgres::Client;

use super::adopt::Found;
use super::error::{statement_kind, ServerError};
use super::request::Request;
use super::session::{Claimant, ServerFacts, ServerObjects, Session};
use super::sql;
use crate::db::{self, ConnInfo, ConnectionBudget, ServerKey};

pub struct PgSession {
    info: ConnInfo,
    budget: ConnectionBudget,
    wait: Duration,
    admin: Client,
    records_ready: bool,
}

/// Connects as the admin, within the budget (waiting at most `wait` for a slot).
pub async fn connect(
    info: ConnInfo,
    budget: &ConnectionBudget,
    wait: Duration,
) -> Result<PgSession, ServerError> {
    let admin = open(&info, budget, wait).await?;
    Ok(PgSession { info, budget: budget.clone(), wait, admin, records_ready: false })
}

/// A connection within the budget; its slot is given back once the
/// connection has closed.
async fn open(
    info: &ConnInfo,
    budget: &ConnectionBudget,
    wait: Duration,
) -> Result<Client, ServerError> {
    let slot = budget
        .server(&ServerKey::of(&info.config))
        .acquire(wait)
        .await
        .ok_or(ServerError::Budget)?;
    Ok(db::connect_in_slot(info, slot).await?)
}

fn failed(what: &str, e: &tokio_postgres::Error) -> ServerError {
    ServerError::Statement { what: what.to_owned(), message: db::describe(e) }
}

impl PgSession {
    /// An admin connection inside the team's database, its `search_path`
    /// pinned. The database's own default (`ALTER DATABASE ... SET
    /// search_path`, which the team may set when it owns the database)
    /// would otherwise decide where `CREATE EXTENSION` puts its objects and
    /// which schemas the admin's statements resolve names in.
    async fn open_inside(&self, request: &Request) -> Result<Client, ServerError> {
        let mut info = self.info.clone();
        info.config.dbname(&request.database);
        let client = open(&info, &self.budget, self.wait).await?;
        client
            .batch_execute("SET search_path = public, pg_temp")
            .await
            .map_err(|e| failed("pinning search_path", &e))?;
        Ok(client)
    }

    async fn ensure_records(&mut self) -> Result<(), ServerError> {
        if self.records_ready {
            return Ok(());
        }
        let exists: bool = self
            .admin
            .query_one("SELECT to_regclass('dbqo.ownership') IS NOT NULL", &[])
            .await
            .map_err(|e| failed("reading the ownership records", &e))?
            .get(0);
        if !exists {
            for statement in sql::create_records(crate::api::server::Engine::Postgres) {
                self.admin
                    .batch_execute(&statement)
                    .await
                    .map_err(|e| failed("creating the ownership records", &e))?;
            }
        }
        self.records_ready = true;
        Ok(())
    }
}

impl Session for PgSession {
    async fn facts(&mut self) -> Result<ServerFacts, ServerError> {
        let row = self
            .admin
            .query_one(
                "SELECT current_setting('server_version'), rolsuper, rolcreatedb, rolcreaterole \
                 FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| failed("reading the server's version", &e))?;
        let (superuser, createdb, createrole): (bool, bool, bool) =
            (row.get(1), row.get(2), row.get(3));
        let mut missing_rights = Vec::new();
        if !superuser && !createdb {
            missing_rights.push("CREATEDB".to_owned());
        }
        if !superuser && !createrole {
            missing_rights.push("CREATEROLE".to_owned());
        }
        Ok(ServerFacts { version: row.get(0), missing_rights })
    }

    async fn observe(&mut self, request: &Request) -> Result<ServerObjects, ServerError> {
        self.ensure_records().await?;
        let row = self
            .admin
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1), \
                        EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $2), \
                        (SELECT owner_uid FROM dbqo.ownership WHERE object = 'database' AND name = $1), \
                        (SELECT owner_uid FROM dbqo.ownership WHERE object = 'user' AND name = $2), \
                        (SELECT privileges FROM dbqo.ownership WHERE object = 'database' AND name = $1)",
                &[&request.database, &request.username],
            )
            .await
            .map_err(|e| failed("reading the database and the user", &e))?;
        Ok(ServerObjects {
            database: Found { exists: row.get(0), recorded_owner: row.get(2) },
            user: Found { exists: row.get(1), recorded_owner: row.get(3) },
            privileges: row.get(4),
        })
    }

    async fn claim(
        &mut self,
        request: &Request,
        claimant: &Claimant,
    ) -> Result<ServerObjects, ServerError> {
        self.ensure_records().await?;
        self.admin
            .execute(
                "INSERT INTO dbqo.ownership (object, name, owner_uid, owner) \
                 VALUES ('database', $1, $3, $4), ('user', $2, $3, $4) ON CONFLICT DO NOTHING",
                &[&request.database, &request.username, &claimant.uid, &claimant.name],
            )
            .await
            .map_err(|e| failed("recording ownership", &e))?;
        self.observe(request).await
    }

    async fn execute(&mut self, statements: &[String]) -> Result<(), ServerError> {
        for statement in statements {
            self.admin
                .batch_execute(statement)
                .await
                .map_err(|e| failed(&statement_kind(statement), &e))?;
        }
        Ok(())
    }

    async fn execute_inside(
        &mut self,
        request: &Request,
        statements: &[String],
    ) -> Result<(), ServerError> {
        if statements.is_empty() {
            return Ok(());
        }
        let client = self.open_inside(request).await?;
        for statement in statements {
            client
                .batch_execute(statement)
                .await
                .map_err(|e| failed(&statement_kind(statement), &e))?;
        }
        Ok(())
    }

    async fn missing_extensions(&mut self, request: &Request) -> Result<Vec<String>, ServerError> {
        if request.extensions.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.open_inside(request).await?;
        let present: Vec<String> = client
            .query("SELECT extname FROM pg_extension", &[])
            .await
            .map_err(|e| failed("reading extensions", &e))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        Ok(request.extensions.iter().filter(|e| !present.contains(e)).cloned().collect())
    }

    async fn privileges_as_asked(&mut self, request: &Request) -> Result<bool, ServerError> {
        let row = self
            .admin
            .query_one(
                "SELECT d.datdba = r.oid, coalesce((SELECT array_agg(a.privilege_type \
                   ORDER BY a.privilege_type COLLATE \"C\") FROM aclexplode(d.datacl) a \
                   WHERE a.grantee = r.oid), '{}') \
                 FROM pg_database d, pg_roles r WHERE d.datname = $1 AND r.rolname = $2",
                &[&request.database, &request.username],
            )
            .await
            .map_err(|e| failed("reading the database's privileges", &e))?;
        let (owned, on_database): (bool, Vec<String>) = (row.get(0), row.get(1));
        if request.owner || owned {
            return Ok(request.owner && owned);
        }
        let expected = sql::pg_expected(request);
        if on_database != expected.database {
            return Ok(false);
        }
        let inside = self.open_inside(request).await?;
        let known: Vec<&str> = sql::PG_TABLE_LEVEL.iter().chain(&["USAGE"]).copied().collect();
        // One row, whatever the number of tables: the count of those that differ.
        let row = inside
            .query_opt(
                // A plain SELECT (no CTE): whoever counts the statements a
                // pass runs by their first word sees a read.
                "SELECT \
                   coalesce((SELECT array_agg(a.privilege_type ORDER BY a.privilege_type COLLATE \"C\") \
                     FROM pg_namespace n, aclexplode(n.nspacl) a \
                     WHERE n.oid = p.oid AND a.grantee = u.oid), '{}'), \
                   (SELECT count(*) FROM pg_class c WHERE c.relnamespace = p.oid \
                     AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND c.relowner <> u.oid \
                     AND coalesce((SELECT array_agg(a.privilege_type ORDER BY a.privilege_type COLLATE \"C\") \
                       FROM aclexplode(c.relacl) a WHERE a.grantee = u.oid AND a.privilege_type = ANY($4)), '{}') \
                       <> CASE WHEN c.relkind = 'S' THEN $3::text[] ELSE $2::text[] END), \
                   coalesce((SELECT array_agg(a.privilege_type ORDER BY a.privilege_type COLLATE \"C\") \
                     FROM pg_default_acl d, aclexplode(d.defaclacl) a \
                     WHERE d.defaclnamespace = p.oid AND d.defaclobjtype = 'r' AND d.defaclrole = me.oid \
                     AND a.grantee = u.oid AND a.privilege_type = ANY($4)), '{}'), \
                   coalesce((SELECT array_agg(a.privilege_type ORDER BY a.privilege_type COLLATE \"C\") \
                     FROM pg_default_acl d, aclexplode(d.defaclacl) a \
                     WHERE d.defaclnamespace = p.oid AND d.defaclobjtype = 'S' AND d.defaclrole = me.oid \
                     AND a.grantee = u.oid AND a.privilege_type = ANY($4)), '{}') \
                 FROM (SELECT oid FROM pg_roles WHERE rolname = $1) u, \
                      (SELECT oid FROM pg_roles WHERE rolname = current_user) me, \
                      (SELECT oid FROM pg_namespace WHERE nspname = 'public') p",
                &[&request.username, &expected.tables, &expected.sequences, &known],
            )
            .await
            .map_err(|e| failed("reading the schema's privileges", &e))?;
        // No role or no schema public: nothing is as asked (the grant says why).
        let Some(row) = row else { return Ok(false) };
        let (schema, differing, default_tables, default_sequences): (
            Vec<String>,
            i64,
            Vec<String>,
            Vec<String>,
        ) = (row.get(0), row.get(1), row.get(2), row.get(3));
        Ok(schema == expected.schema
            && differing == 0
            && default_tables == expected.tables
            && default_sequences == expected.sequences)
    }

    async fn grant(&mut self, request: &Request, replace: bool) -> Result<(), ServerError> {
        self.execute(&sql::pg_database_privileges(request, replace)).await?;
        self.execute_inside(request, &sql::pg_schema_privileges(request, replace)).await
    }

    async fn record_privileges(
        &mut self,
        request: &Request,
        text: &str,
    ) -> Result<(), ServerError> {
        self.admin
            .execute(
                "UPDATE dbqo.ownership SET privileges = $2 WHERE object = 'database' AND name = $1",
                &[&request.database, &text],
            )
            .await
            .map_err(|e| failed("recording privileges", &e))?;
        Ok(())
    }

    async fn forget(&mut self, request: &Request, uid: &str) -> Result<(), ServerError> {
        self.admin
            .execute(
                "DELETE FROM dbqo.ownership WHERE owner_uid = $3 AND \
                 ((object = 'database' AND name = $1) OR (object = 'user' AND name = $2))",
                &[&request.database, &request.username, &uid],
            )
            .await
            .map_err(|e| failed("removing ownership records", &e))?;
        Ok(())
    }
}
