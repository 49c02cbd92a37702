//! A PostgreSQL server from the machine's packages, in a temp dir, on a free
//! loopback port, optionally with TLS from a CA made for it.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    process::{free_port, run, Supervised},
    Error,
};

/// Superuser of every test server.
pub const SUPERUSER: &str = "postgres";
/// Its password; the server sits on loopback in a throwaway directory.
pub const SUPERUSER_PASSWORD: &str = "dbqo-test-password";

#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresOptions {
    /// Serve TLS with a certificate for `127.0.0.1`/`localhost` signed by a test CA.
    pub tls: bool,
    /// `max_connections` (default 400, enough for a whole parallel test run).
    pub max_connections: Option<u32>,
    /// Also listen on this address and accept password logins from any
    /// network (for pods on a test node; loopback only otherwise).
    pub listen: Option<std::net::Ipv4Addr>,
}

/// How to reach a running server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PostgresInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// PEM of the CA that signed the server certificate, when TLS is on.
    pub ca_cert: Option<PathBuf>,
    pub data_dir: PathBuf,
}

impl PostgresInfo {
    /// libpq URI of the superuser for `database`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgresql://{}:{}@{}:{}/{database}?sslmode=disable",
            self.user, self.password, self.host, self.port
        )
    }
}

/// A running server; stopped when dropped.
pub struct Postgres {
    pub info: PostgresInfo,
    process: Option<Supervised>,
    run_as: Vec<String>,
    bin: PathBuf,
}

fn bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("DBQO_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    if let Ok(out) = run("pg_config", &["--bindir"]) {
        let dir = PathBuf::from(out.trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| Error::io("find PostgreSQL under /usr/lib/postgresql", e))?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    candidates.sort();
    candidates
        .pop()
        .ok_or_else(|| Error::msg("no PostgreSQL server binaries found; run hack/provision.sh"))
}

/// PostgreSQL refuses to run as root; as root we switch to the `postgres` user.
fn run_as_prefix(dir: &Path) -> Result<Vec<String>, Error> {
    let uid = run("id", &["-u"])?;
    if uid.trim() != "0" {
        return Ok(Vec::new());
    }
    run("chown", &["-R", "postgres:postgres", &dir.to_string_lossy()])?;
    Ok(["--reuid=postgres", "--regid=postgres", "--init-groups"].map(String::from).to_vec())
}

pub(crate) fn make_tls(dir: &Path) -> Result<PathBuf, Error> {
    let p = |name: &str| dir.join(name).to_string_lossy().into_owned();
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=dbqo-test-ca",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.crt"),
        ],
    )?;
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            &p("server.key"),
            "-out",
            &p("server.csr"),
        ],
    )?;
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        .map_err(|e| Error::io("write san.ext", e))?;
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p("server.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p("san.ext"),
            "-out",
            &p("server.crt"),
        ],
    )?;
    run("chmod", &["600", &p("server.key")])?;
    Ok(dir.join("ca.crt"))
}

impl Postgres {
    /// Initialises and starts a server under `dir`.
    pub fn start(dir: &Path, options: PostgresOptions) -> Result<Self, Error> {
        let bin = bin_dir()?;
        let data = dir.join("data");
        let socket_dir = dir.join("socket");
        for d in [dir, &socket_dir] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        }
        let ca_cert = if options.tls { Some(make_tls(dir)?) } else { None };
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD).map_err(|e| Error::io("write pwfile", e))?;
        let run_as = run_as_prefix(dir)?;

        let mut initdb = Supervised::start(
            "initdb",
            &run_as,
            &bin.join("initdb"),
            &[
                "-D".into(),
                data.to_string_lossy().into(),
                "-U".into(),
                SUPERUSER.into(),
                format!("--pwfile={}", pwfile.display()),
                "--auth-host=scram-sha-256".into(),
                "--auth-local=trust".into(),
                "-E".into(),
                "UTF8".into(),
                "--locale=C".into(),
                "--no-sync".into(),
            ],
            dir.join("initdb.log"),
        )?;
        initdb.wait_exit(Duration::from_secs(120))?;

        let port = free_port()?;
        let mut settings = vec![
            format!("port = {port}"),
            match options.listen {
                Some(ip) => format!("listen_addresses = '127.0.0.1,{ip}'"),
                None => "listen_addresses = '127.0.0.1'".into(),
            },
            format!("unix_socket_directories = '{}'", socket_dir.display()),
            format!("max_connections = {}", options.max_connections.unwrap_or(400)),
            "fsync = off".into(),
            "synchronous_commit = off".into(),
            "full_page_writes = off".into(),
            "shared_preload_libraries = 'pg_stat_statements'".into(),
            "log_min_messages = warning".into(),
        ];
        if options.tls {
            settings.push("ssl = on".into());
            settings.push(format!("ssl_cert_file = '{}'", dir.join("server.crt").display()));
            settings.push(format!("ssl_key_file = '{}'", dir.join("server.key").display()));
        }
        if options.listen.is_some() {
            let hba = data.join("pg_hba.conf");
            let mut text =
                std::fs::read_to_string(&hba).map_err(|e| Error::io("read pg_hba.conf", e))?;
            text.push_str("host all all 0.0.0.0/0 scram-sha-256\n");
            std::fs::write(&hba, text).map_err(|e| Error::io("write pg_hba.conf", e))?;
        }
        let conf = data.join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf).map_err(|e| Error::io("read postgresql.conf", e))?;
        text.push_str(&format!("\n# dbqo testenv\n{}\n", settings.join("\n")));
        std::fs::write(&conf, text).map_err(|e| Error::io("write postgresql.conf", e))?;

        let info = PostgresInfo {
            host: options.listen.map_or_else(|| "127.0.0.1".into(), |ip| ip.to_string()),
            port,
            user: SUPERUSER.into(),
            password: SUPERUSER_PASSWORD.into(),
            ca_cert,
            data_dir: data,
        };
        let mut server = Self { info, process: None, run_as, bin };
        server.resume()?;
        Ok(server)
    }

    /// Starts the server again after [`Postgres::pause`] (same port, same data).
    pub fn resume(&mut self) -> Result<(), Error> {
        if self.process.is_some() {
            return Ok(());
        }
        let data = self.info.data_dir.clone();
        let log = data.parent().unwrap_or(&data).join("postgres.log");
        let mut process = Supervised::start(
            "postgres",
            &self.run_as,
            &self.bin.join("postgres"),
            &["-D".into(), data.to_string_lossy().into()],
            log,
        )?
        .with_stop_signal("INT");
        let addr = format!("{}:{}", self.info.host, self.info.port);
        let pg_isready = self.bin.join("pg_isready");
        let port = self.info.port.to_string();
        process.wait_until(Duration::from_secs(60), || {
            TcpStream::connect(&addr).is_ok()
                && std::process::Command::new(&pg_isready)
                    .args(["-q", "-h", "127.0.0.1", "-p", &port])
                    .status()
                    .is_ok_and(|s| s.success())
        })?;
        self.process = Some(process);
        Ok(())
    }

    /// The postmaster's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Supervised::pid)
    }

    /// Stops the server (fast shutdown), keeping its data for [`Postgres::resume`].
    pub fn pause(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(10));
        }
    }
}
