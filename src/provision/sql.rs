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
            if options.encoding.is_some() || options.locale.is_some() || options.collation.is_some()
            {
                // Another encoding or locale than template1's needs template0.
                sql.push_str(" TEMPLATE template0");
            }
            if let Some(encoding) = &options.encoding {
                sql.push_str(&format!(" ENCODING {}", pg_literal(encoding)));
            }
            if let Some(locale) = &options.locale {
                sql.push_str(&format!(" LOCALE {}", pg_literal(locale)));
            }
            if let Some(collation) = &options.collation {
                sql.push_str(&format!(" LC_COLLATE {}", pg_literal(collation)));
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
/// the PostgreSQL database exactly `request.privileges`, its owner the user
/// when `request.owner` (the rest is [`pg_schema_privileges`], run inside the
/// database). `replace` first revokes what an earlier set granted.
pub fn pg_database_privileges(request: &Request, replace: bool) -> Vec<String> {
    let mut sql = Vec::new();
    let (db, user) = (pg_ident(&request.database), pg_ident(&request.username));
    if request.owner {
        // ALTER ... OWNER needs the admin to be a member of the new owner.
        sql.push(pg_admin_joins(&request.username));
        sql.push(format!("ALTER DATABASE {db} OWNER TO {user}"));
        return sql;
    }
    if replace {
        sql.push(format!("ALTER DATABASE {db} OWNER TO CURRENT_USER"));
        sql.push(format!("REVOKE ALL ON DATABASE {db} FROM {user}"));
    }
    let on_db = pg_expected(request).database;
    let on_db = if is_all(request) { vec!["ALL PRIVILEGES"] } else { on_db };
    sql.push(format!("GRANT {} ON DATABASE {db} TO {user}", on_db.join(", ")));
    sql
}

/// PostgreSQL: the admin becomes a member of the user's role, so that it
/// may hand the database over (`OWNER`) or restore as the user (`--role`).
pub fn pg_admin_joins(user: &str) -> String {
    format!("GRANT {} TO CURRENT_USER", pg_ident(user))
}

/// PostgreSQL table privileges, as `aclexplode` names them.
pub const PG_TABLE_LEVEL: [&str; 7] =
    ["DELETE", "INSERT", "REFERENCES", "SELECT", "TRIGGER", "TRUNCATE", "UPDATE"];
/// PostgreSQL sequence privileges `ALL` grants.
pub const PG_SEQUENCE_LEVEL: [&str; 3] = ["SELECT", "UPDATE", "USAGE"];

/// What the catalogs of a PostgreSQL database show the user holding once
/// the spec's privileges are granted (each list sorted bytewise). Not used
/// for an owner, who holds everything by owning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgExpected {
    pub database: Vec<&'static str>,
    pub schema: Vec<&'static str>,
    pub tables: Vec<&'static str>,
    pub sequences: Vec<&'static str>,
}

pub fn pg_expected(request: &Request) -> PgExpected {
    if is_all(request) {
        return PgExpected {
            database: vec!["CONNECT", "CREATE", "TEMPORARY"],
            schema: vec!["CREATE", "USAGE"],
            tables: PG_TABLE_LEVEL.to_vec(),
            sequences: PG_SEQUENCE_LEVEL.to_vec(),
        };
    }
    let asked = |p: &&str| request.privileges.iter().any(|q| q == p);
    // A user that cannot connect has no use for anything else.
    let mut database: Vec<&str> = PG_DATABASE_LEVEL.into_iter().filter(asked).collect();
    if !database.contains(&"CONNECT") {
        database.insert(0, "CONNECT");
    }
    let mut schema = vec!["USAGE"];
    if asked(&"CREATE") {
        schema.insert(0, "CREATE");
    }
    PgExpected {
        database,
        schema,
        tables: PG_TABLE_LEVEL.into_iter().filter(asked).collect(),
        sequences: Vec::new(),
    }
}

/// The MySQL privileges (and `GRANT OPTION`) the spec asks the user to hold
/// on its database.
pub fn my_wanted(request: &Request) -> std::collections::BTreeSet<String> {
    let mut wanted: std::collections::BTreeSet<String> = if is_all(request) {
        super::request::MYSQL_PRIVILEGES
            .iter()
            .filter(|p| **p != "ALL")
            .map(|p| p.to_string())
            .collect()
    } else {
        request.privileges.iter().cloned().collect()
    };
    if request.owner {
        wanted.insert(GRANT_OPTION.to_owned());
    }
    wanted
}

pub const GRANT_OPTION: &str = "GRANT OPTION";

/// MySQL: the GRANT and REVOKE that take the user from `held` (as the
/// catalogs show it, only privileges this operator knows) to the spec's
/// set. Each names only what differs: a REVOKE of a privilege not held
/// fails on MySQL.
pub fn my_privilege_changes(
    request: &Request,
    held: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    let wanted = my_wanted(request);
    let (db, user) = (my_grant_db(&request.database), my_user(&request.username));
    let mut sql = Vec::new();
    let revoke: Vec<&str> = held.difference(&wanted).map(String::as_str).collect();
    if !revoke.is_empty() {
        sql.push(format!("REVOKE {} ON {db}.* FROM {user}", revoke.join(", ")));
    }
    let grant: Vec<&str> =
        wanted.difference(held).map(String::as_str).filter(|p| *p != GRANT_OPTION).collect();
    let grant_option = wanted.contains(GRANT_OPTION) && !held.contains(GRANT_OPTION);
    if !grant.is_empty() || grant_option {
        let list = if grant.is_empty() { "USAGE".to_owned() } else { grant.join(", ") };
        let with = if grant_option { " WITH GRANT OPTION" } else { "" };
        sql.push(format!("GRANT {list} ON {db}.* TO {user}{with}"));
    }
    sql
}

/// PostgreSQL, run inside the new database as the admin: the table-level
/// privileges on schema `public`, for tables there now and (through default
/// privileges) those the admin creates later.
pub fn pg_schema_privileges(request: &Request, replace: bool) -> Vec<String> {
    let user = pg_ident(&request.username);
    let mut sql = Vec::new();
    if request.owner {
        // The owner holds everything in its database by owning it (schema
        // public belongs to pg_database_owner); revoking would take rights
        // on its own tables away.
        return sql;
    }
    if replace {
        sql.push(format!("REVOKE ALL ON SCHEMA public FROM {user}"));
        sql.push(pg_revoke_on_relations_of_others(&request.username));
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

/// PostgreSQL: revokes the user's rights on the tables, views and sequences
/// of schema `public` that it does not own. Not `ON ALL TABLES`: a
/// superuser's REVOKE acts as the owner's, so it would take the user's rights
/// on the tables it created itself, and the application with them.
fn pg_revoke_on_relations_of_others(username: &str) -> String {
    let user = pg_literal(username);
    format!(
        "DO $dbqo$ DECLARE r record; BEGIN \
           FOR r IN SELECT c.oid::regclass AS name, c.relkind = 'S' AS sequence FROM pg_class c \
             WHERE c.relnamespace = 'public'::regnamespace \
             AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') \
             AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = {user}) \
           LOOP \
             EXECUTE format('REVOKE ALL ON %s %s FROM %I', \
               CASE WHEN r.sequence THEN 'SEQUENCE' ELSE 'TABLE' END, r.name, {user}); \
           END LOOP; \
         END $dbqo$"
    )
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
            secret_template: Default::default(),
            owner: false,
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
            pg_database_privileges(&all, false),
            vec!["GRANT ALL PRIVILEGES ON DATABASE \"team_a\" TO \"team_a\""]
        );
        let select = request(Engine::Postgres, &["SELECT"]);
        assert_eq!(
            pg_database_privileges(&select, true),
            vec![
                "ALTER DATABASE \"team_a\" OWNER TO CURRENT_USER",
                "REVOKE ALL ON DATABASE \"team_a\" FROM \"team_a\"",
                "GRANT CONNECT ON DATABASE \"team_a\" TO \"team_a\""
            ]
        );
        let replaced = pg_schema_privileges(&select, true);
        assert!(
            replaced.iter().all(|s| !s.contains("ON ALL TABLES IN SCHEMA public FROM")),
            "a REVOKE on every table takes the user's rights on its own: {replaced:?}"
        );
        assert!(replaced.iter().any(
            |s| s.contains("c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = 'team_a')")
        ));
        let schema = pg_schema_privileges(&select, false);
        assert!(
            schema.contains(&"GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"team_a\"".into())
        );
        let mut owner = request(Engine::Postgres, &["ALL"]);
        owner.owner = true;
        assert_eq!(
            pg_database_privileges(&owner, true),
            vec![
                "GRANT \"team_a\" TO CURRENT_USER",
                "ALTER DATABASE \"team_a\" OWNER TO \"team_a\""
            ]
        );
        assert!(pg_schema_privileges(&owner, true).is_empty(), "an owner's rights stay its own");
    }

    #[test]
    fn the_catalogs_expected_state_per_privilege_set() {
        let e = pg_expected(&request(Engine::Postgres, &["CREATE", "SELECT", "TEMPORARY"]));
        assert_eq!(e.database, vec!["CONNECT", "CREATE", "TEMPORARY"]);
        assert_eq!(e.schema, vec!["CREATE", "USAGE"]);
        assert_eq!(e.tables, vec!["SELECT"]);
        assert!(e.sequences.is_empty());
        let all = pg_expected(&request(Engine::Postgres, &["ALL"]));
        assert_eq!(all.tables.len(), 7);
        for list in [&all.database, &all.schema, &all.tables, &all.sequences] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "sorted bytewise: {list:?}");
        }
    }

    #[test]
    fn mysql_changes_name_only_what_differs() {
        let held = |list: &[&str]| list.iter().map(|p| p.to_string()).collect();
        let my = request(Engine::Mariadb, &["INSERT", "SELECT"]);
        assert_eq!(
            my_privilege_changes(&my, &held(&["DELETE", "SELECT"])),
            vec![
                "REVOKE DELETE ON `team\\_a`.* FROM 'team_a'@'%'",
                "GRANT INSERT ON `team\\_a`.* TO 'team_a'@'%'"
            ]
        );
        assert!(my_privilege_changes(&my, &held(&["INSERT", "SELECT"])).is_empty());
        let mut owner = request(Engine::Mariadb, &["ALL"]);
        owner.owner = true;
        let changes = my_privilege_changes(&owner, &held(&[]));
        assert_eq!(changes.len(), 1);
        assert!(changes[0].ends_with(" WITH GRANT OPTION"), "{changes:?}");
        let all: Vec<String> =
            my_wanted(&owner).into_iter().filter(|p| p != GRANT_OPTION).collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        assert_eq!(
            my_privilege_changes(&owner, &held(&all)),
            vec!["GRANT USAGE ON `team\\_a`.* TO 'team_a'@'%' WITH GRANT OPTION"]
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
