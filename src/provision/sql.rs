//! The SQL text of provisioning, per engine. Names have passed
//! [`request`](super::request) already; they are quoted by the engine's rules
//! anyway. Passwords never appear in clear: PostgreSQL gets a SCRAM-SHA-256
//! verifier computed here, MySQL/MariaDB a string literal escaped by the
//! driver (`mysql_common`) for the session's `NO_BACKSLASH_ESCAPES` mode.

use crate::api::server::Engine;

use super::request::Request;

/// `"name"`, quotes doubled (PostgreSQL).
pub fn pg_ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

/// `'text'` (PostgreSQL), backslashes handled with an `E''` literal.
pub fn pg_literal(text: &str) -> String {
    postgres_protocol::escape::escape_literal(text).trim().to_owned()
}

/// `` `name` ``, backticks doubled (MySQL).
pub fn my_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A database name as a GRANT pattern (MySQL): `_` and `%` are wildcards
/// there, so `team_a` would also grant on `teamXa`; both are escaped.
pub fn my_grant_db(name: &str) -> String {
    my_ident(&name.replace('\\', "\\\\").replace('_', "\\_").replace('%', "\\%"))
}

/// `'text'`, escaped by the driver for a session in `NO_BACKSLASH_ESCAPES` mode.
pub fn my_literal(text: &str) -> String {
    mysql_async::Value::from(text).as_sql(true)
}

/// `'user'@'%'`.
pub fn my_user(name: &str) -> String {
    format!("{}@'%'", my_literal(name))
}

/// The session settings every MySQL provisioning connection starts with: the
/// escaping of literals depends on `NO_BACKSLASH_ESCAPES`.
pub const MY_SESSION: &str = "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES,STRICT_TRANS_TABLES'";

/// Creates the ownership table (run only when a read showed it missing).
pub fn create_records(engine: Engine) -> Vec<String> {
    match engine {
        Engine::Postgres => vec![
            "CREATE SCHEMA IF NOT EXISTS dbqo".into(),
            "CREATE TABLE IF NOT EXISTS dbqo.ownership (object text NOT NULL, name text NOT NULL, \
             owner_uid text NOT NULL, owner text NOT NULL, privileges text, \
             PRIMARY KEY (object, name))"
                .into(),
        ],
        _ => vec![
            "CREATE DATABASE IF NOT EXISTS dbqo".into(),
            "CREATE TABLE IF NOT EXISTS dbqo.ownership (object varchar(16) NOT NULL, \
             name varchar(80) NOT NULL, owner_uid varchar(64) NOT NULL, owner varchar(320) NOT NULL, \
             privileges text, PRIMARY KEY (object, name))"
                .into(),
        ],
    }
}

/// Creates the user with `password`.
pub fn create_user(engine: Engine, user: &str, password: &str) -> String {
    match engine {
        Engine::Postgres => format!(
            "CREATE ROLE {} LOGIN PASSWORD {}",
            pg_ident(user),
            pg_literal(&scram(password))
        ),
        _ => format!("CREATE USER {} IDENTIFIED BY {}", my_user(user), my_literal(password)),
    }
}

/// Sets a new password.
pub fn set_password(engine: Engine, user: &str, password: &str) -> String {
    match engine {
        Engine::Postgres => {
            format!("ALTER ROLE {} PASSWORD {}", pg_ident(user), pg_literal(&scram(password)))
        }
        _ => format!("ALTER USER {} IDENTIFIED BY {}", my_user(user), my_literal(password)),
    }
}

fn scram(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// CREATE DATABASE with the creation options; on PostgreSQL also the
/// revocation of the `CONNECT` and `TEMPORARY` every role gets on a new
/// database by default (other teams must not even connect).
pub fn create_database(request: &Request) -> Vec<String> {
    let create = create_database_statement(request);
    match request.engine {
        Engine::Postgres => vec![
            create,
            format!("REVOKE ALL ON DATABASE {} FROM PUBLIC", pg_ident(&request.database)),
        ],
        _ => vec![create],
    }
}

fn create_database_statement(request: &Request) -> String {
    let options = &request.options;
    match request.engine {
        Engine::Postgres => {
            let mut sql = format!("CREATE DATABASE {}", pg_ident(&request.database));
            if options.encoding.is_some() || options.locale.is_some() {
                // Another encoding or locale than template1's needs template0.
                sql.push_str(" TEMPLATE template0");
            }
            if let Some(encoding) = &options.encoding {
                sql.push_str(&format!(" ENCODING {}", pg_literal(encoding)));
            }
            if let Some(locale) = &options.locale {
                sql.push_str(&format!(" LOCALE {}", pg_literal(locale)));
            }
            sql
        }
        _ => {
            let charset = options.charset.as_deref().unwrap_or("utf8mb4");
            let mut sql = format!(
                "CREATE DATABASE {} CHARACTER SET {}",
                my_ident(&request.database),
                my_ident(charset)
            );
            if let Some(collation) = &options.collation {
                sql.push_str(&format!(" COLLATE {}", my_ident(collation)));
            }
            sql
        }
    }
}

/// PostgreSQL privileges that belong to the database itself.
const PG_DATABASE_LEVEL: [&str; 3] = ["CONNECT", "CREATE", "TEMPORARY"];

/// Statements run in the admin's database that make the user's rights on
/// the database exactly `request.privileges` (PostgreSQL: the database-level
/// part; the rest is [`pg_schema_privileges`], run inside the database).
/// `replace` first revokes what an earlier set granted.
pub fn database_privileges(request: &Request, replace: bool) -> Vec<String> {
    let mut sql = Vec::new();
    match request.engine {
        Engine::Postgres => {
            let (db, user) = (pg_ident(&request.database), pg_ident(&request.username));
            if replace {
                sql.push(format!("REVOKE ALL ON DATABASE {db} FROM {user}"));
            }
            let mut on_db: Vec<&str> = if is_all(request) {
                vec!["ALL PRIVILEGES"]
            } else {
                request
                    .privileges
                    .iter()
                    .map(String::as_str)
                    .filter(|p| PG_DATABASE_LEVEL.contains(p))
                    .collect()
            };
            // A user that cannot connect has no use for anything else.
            if !on_db.contains(&"CONNECT") && !on_db.contains(&"ALL PRIVILEGES") {
                on_db.insert(0, "CONNECT");
            }
            sql.push(format!("GRANT {} ON DATABASE {db} TO {user}", on_db.join(", ")));
        }
        _ => {
            let (db, user) = (my_grant_db(&request.database), my_user(&request.username));
            if replace {
                sql.push(format!("REVOKE ALL PRIVILEGES ON {db}.* FROM {user}"));
            }
            let privileges = if is_all(request) {
                "ALL PRIVILEGES".to_owned()
            } else {
                request.privileges.join(", ")
            };
            sql.push(format!("GRANT {privileges} ON {db}.* TO {user}"));
        }
    }
    sql
}

/// PostgreSQL, run inside the new database as the admin: the table-level
/// privileges on schema `public`, for tables there now and (through default
/// privileges) those the admin creates later.
pub fn pg_schema_privileges(request: &Request, replace: bool) -> Vec<String> {
    let user = pg_ident(&request.username);
    let mut sql = Vec::new();
    if replace {
        sql.push(format!("REVOKE ALL ON SCHEMA public FROM {user}"));
        sql.push(format!("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {user}"));
        sql.push(format!("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {user}"));
        sql.push(format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM {user}"
        ));
        sql.push(format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM {user}"
        ));
    }
    if is_all(request) {
        sql.push(format!("GRANT ALL ON SCHEMA public TO {user}"));
        sql.push(format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {user}"));
        sql.push(format!("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {user}"));
        sql.push(format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO {user}"
        ));
        sql.push(format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON SEQUENCES TO {user}"
        ));
        return sql;
    }
    sql.push(format!("GRANT USAGE ON SCHEMA public TO {user}"));
    let on_tables: Vec<&str> = request
        .privileges
        .iter()
        .map(String::as_str)
        .filter(|p| !PG_DATABASE_LEVEL.contains(p))
        .collect();
    if request.privileges.iter().any(|p| p == "CREATE") {
        sql.push(format!("GRANT CREATE ON SCHEMA public TO {user}"));
    }
    if !on_tables.is_empty() {
        let list = on_tables.join(", ");
        sql.push(format!("GRANT {list} ON ALL TABLES IN SCHEMA public TO {user}"));
        sql.push(format!(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT {list} ON TABLES TO {user}"
        ));
    }
    sql
}

fn is_all(request: &Request) -> bool {
    request.privileges.iter().any(|p| p == "ALL")
}

/// Drops the database and the user (PostgreSQL: ending its sessions first).
pub fn drop_all(request: &Request) -> Vec<String> {
    match request.engine {
        Engine::Postgres => vec![
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", pg_ident(&request.database)),
            format!("DROP ROLE IF EXISTS {}", pg_ident(&request.username)),
        ],
        _ => vec![
            format!("DROP DATABASE IF EXISTS {}", my_ident(&request.database)),
            format!("DROP USER IF EXISTS {}", my_user(&request.username)),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::database::DatabaseDeletionPolicy;
    use crate::provision::request::CreateOptions;

    fn request(engine: Engine, privileges: &[&str]) -> Request {
        Request {
            engine,
            database: "team_a".into(),
            username: "team_a".into(),
            privileges: privileges.iter().map(|p| p.to_string()).collect(),
            extensions: vec![],
            options: CreateOptions::default(),
            secret_name: "s".into(),
            deletion: DatabaseDeletionPolicy::Retain,
        }
    }

    #[test]
    fn identifiers_are_quoted_by_each_engines_rules() {
        assert_eq!(pg_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(my_ident("a`b"), "`a``b`");
        assert_eq!(my_grant_db("team_a"), "`team\\_a`");
        assert_eq!(my_user("u'x"), "'u''x'@'%'");
    }

    #[test]
    fn hostile_passwords_stay_literals() {
        let hostile = "a'b\\c;d\"e`f$$g";
        let my = create_user(Engine::Mariadb, "u", hostile);
        assert_eq!(my, "CREATE USER 'u'@'%' IDENTIFIED BY 'a''b\\c;d\"e`f$$g'");
        let pg = create_user(Engine::Postgres, "u", hostile);
        assert!(pg.starts_with("CREATE ROLE \"u\" LOGIN PASSWORD 'SCRAM-SHA-256$4096:"));
        assert!(!pg.contains(hostile), "the password never travels in clear");
        assert_eq!(pg_literal("a'b\\c"), "E'a''b\\\\c'");
    }

    #[test]
    fn privileges_are_granted_per_engine() {
        let all = request(Engine::Postgres, &["ALL"]);
        assert_eq!(
            database_privileges(&all, false),
            vec!["GRANT ALL PRIVILEGES ON DATABASE \"team_a\" TO \"team_a\""]
        );
        let select = request(Engine::Postgres, &["SELECT"]);
        assert_eq!(
            database_privileges(&select, true),
            vec![
                "REVOKE ALL ON DATABASE \"team_a\" FROM \"team_a\"",
                "GRANT CONNECT ON DATABASE \"team_a\" TO \"team_a\""
            ]
        );
        let schema = pg_schema_privileges(&select, false);
        assert!(
            schema.contains(&"GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"team_a\"".into())
        );
        let my = request(Engine::Mariadb, &["INSERT", "SELECT"]);
        assert_eq!(
            database_privileges(&my, true),
            vec![
                "REVOKE ALL PRIVILEGES ON `team\\_a`.* FROM 'team_a'@'%'",
                "GRANT INSERT, SELECT ON `team\\_a`.* TO 'team_a'@'%'"
            ]
        );
    }

    #[test]
    fn creation_options_are_written() {
        let mut r = request(Engine::Postgres, &["ALL"]);
        r.options.encoding = Some("UTF8".into());
        r.options.locale = Some("C".into());
        assert_eq!(
            create_database(&r),
            vec![
                "CREATE DATABASE \"team_a\" TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'",
                "REVOKE ALL ON DATABASE \"team_a\" FROM PUBLIC"
            ]
        );
        let mut m = request(Engine::Mariadb, &["ALL"]);
        m.options.collation = Some("utf8mb4_unicode_ci".into());
        assert_eq!(
            create_database(&m),
            vec!["CREATE DATABASE `team_a` CHARACTER SET `utf8mb4` COLLATE `utf8mb4_unicode_ci`"]
        );
    }
}
