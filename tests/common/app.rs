//! A team's view of its database: the engine, and a connection made with a
//! credentials Secret's data, as an application would make it.

use std::collections::BTreeMap;

use mysql_async::prelude::Queryable;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Engine {
    Postgres,
    MariaDb,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::MariaDb => "mariadb",
        }
    }
}

/// A connection as an application, with a credentials Secret's data.
pub enum App {
    Postgres(tokio_postgres::Client),
    MariaDb(mysql_async::Conn),
}

impl App {
    pub async fn connect(
        engine: Engine,
        data: &BTreeMap<String, String>,
        db: Option<&str>,
    ) -> Result<Self, String> {
        let db = db.unwrap_or(&data["dbname"]).to_owned();
        match engine {
            Engine::Postgres => {
                let mut config = tokio_postgres::Config::new();
                config
                    .host(&data["host"])
                    .port(data["port"].parse().unwrap())
                    .user(&data["username"])
                    .password(&data["password"])
                    .dbname(&db);
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(|e| format!("{:?}", e.as_db_error().map(|d| d.code().code())))?;
                tokio::spawn(connection);
                Ok(App::Postgres(client))
            }
            Engine::MariaDb => {
                let opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname(data["host"].clone())
                    .tcp_port(data["port"].parse().unwrap())
                    .user(Some(data["username"].clone()))
                    .pass(Some(data["password"].clone()))
                    .db_name(Some(db))
                    .prefer_socket(false);
                mysql_async::Conn::new(opts).await.map(App::MariaDb).map_err(|e| e.to_string())
            }
        }
    }

    pub async fn exec(&mut self, sql: &str) -> Result<(), String> {
        match self {
            App::Postgres(c) => c
                .batch_execute(sql)
                .await
                .map_err(|e| format!("{:?}", e.as_db_error().map(|d| d.code().code()))),
            App::MariaDb(c) => c.query_drop(sql).await.map_err(|e| e.to_string()),
        }
    }

    /// The databases this user can see.
    pub async fn databases(&mut self) -> Vec<String> {
        match self {
            App::Postgres(c) => c
                .query(
                    "SELECT datname FROM pg_database WHERE has_database_privilege(datname, 'CONNECT')",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
            App::MariaDb(c) => c.query("SHOW DATABASES").await.unwrap(),
        }
    }
}

impl App {
    /// The rows of `table`.
    pub async fn count(&mut self, table: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {table}");
        match self {
            App::Postgres(c) => c.query_one(&sql, &[]).await.expect(&sql).get(0),
            App::MariaDb(c) => c.query_first::<i64, _>(&sql).await.expect(&sql).unwrap_or(0),
        }
    }
}
