//! A MariaDB server from the machine's packages (Debian's `mariadb-server`),
//! in a temp dir, on a free loopback port, optionally with TLS from a CA made
//! for it; with an admin user that may create databases and users and grant.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    postgres::make_tls,
    process::{free_port, run, Supervised},
    Error,
};

/// The admin user of every test server (all privileges, with GRANT OPTION).
pub const ADMIN: &str = "dbqo_admin";
/// Its password; the server sits on loopback in a throwaway directory.
pub const ADMIN_PASSWORD: &str = "dbqo-test-password";

#[derive(Debug, Clone, Copy, Default)]
pub struct MariaDbOptions {
    /// Serve TLS with a certificate for `127.0.0.1`/`localhost` signed by a test CA.
    pub tls: bool,
    /// `max_connections` (default 200).
    pub max_connections: Option<u32>,
    /// Also listen on this address (for pods on a test node; loopback only otherwise).
    pub listen: Option<std::net::Ipv4Addr>,
}

/// How to reach a running server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MariaDbInfo {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// PEM of the CA that signed the server certificate, when TLS is on.
    pub ca_cert: Option<PathBuf>,
    /// The server's socket, where `root` logs in without a password.
    pub socket: PathBuf,
}

/// A running server; stopped when dropped.
pub struct MariaDb {
    pub info: MariaDbInfo,
    _process: Supervised,
}

fn which(program: &str) -> Result<PathBuf, Error> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let path = Path::new(dir).join(program);
        if path.exists() {
            return Ok(path);
        }
    }
    Err(Error::msg(format!(
        "{program} not found; run hack/provision.sh (it installs mariadb-server)"
    )))
}

impl MariaDb {
    /// Initialises and starts a server under `dir`.
    pub fn start(dir: &Path, options: MariaDbOptions) -> Result<Self, Error> {
        let data = dir.join("data");
        // A temp dir of its own: servers started side by side in the shared
        // /tmp clash on their temporary tables (seen as a failed install:
        // "Unknown table 'mysql.tmp_proxies_priv'").
        let tmp = dir.join("tmp");
        for d in [&data, &tmp] {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("create {}", d.display()), e))?;
        }
        let ca_cert = if options.tls { Some(make_tls(dir)?) } else { None };
        // mariadbd will not run as root without being told to; as root the
        // server runs as `mysql`, which must own its files.
        let root = run("id", &["-u"])?.trim() == "0";
        if root {
            run("chown", &["-R", "mysql:mysql", &dir.to_string_lossy()])?;
        }
        let user_arg = if root { "--user=mysql" } else { "" };
        let mut install = Supervised::start(
            "mariadb-install-db",
            &[],
            &which("mariadb-install-db")?,
            &[
                "--no-defaults".into(),
                format!("--datadir={}", data.display()),
                format!("--tmpdir={}", tmp.display()),
                "--auth-root-authentication-method=socket".into(),
                "--skip-test-db".into(),
                user_arg.into(),
            ]
            .into_iter()
            .filter(|a: &String| !a.is_empty())
            .collect::<Vec<_>>(),
            dir.join("install.log"),
        )?;
        install.wait_exit(Duration::from_secs(120))?;

        let port = free_port()?;
        let socket = dir.join("mysqld.sock");
        let mut args = vec![
            "--no-defaults".into(),
            format!("--datadir={}", data.display()),
            format!("--tmpdir={}", tmp.display()),
            format!("--port={port}"),
            match options.listen {
                Some(ip) => format!("--bind-address=127.0.0.1,{ip}"),
                None => "--bind-address=127.0.0.1".into(),
            },
            format!("--socket={}", socket.display()),
            format!("--pid-file={}", dir.join("mysqld.pid").display()),
            format!("--log-error={}", dir.join("mariadb.err").display()),
            format!("--max-connections={}", options.max_connections.unwrap_or(200)),
            "--skip-name-resolve".into(),
            "--skip-log-bin".into(),
            "--innodb-buffer-pool-size=16M".into(),
            "--innodb-log-file-size=8M".into(),
            "--innodb-flush-log-at-trx-commit=0".into(),
            "--performance-schema=OFF".into(),
        ];
        if root {
            args.push("--user=mysql".into());
        }
        if options.tls {
            args.push(format!("--ssl-ca={}", dir.join("ca.crt").display()));
            args.push(format!("--ssl-cert={}", dir.join("server.crt").display()));
            args.push(format!("--ssl-key={}", dir.join("server.key").display()));
        }
        let mut process = Supervised::start(
            "mariadbd",
            &[],
            &which("mariadbd")?,
            &args,
            dir.join("mariadbd.log"),
        )?;
        let addr = format!("127.0.0.1:{port}");
        let sock = socket.clone();
        process.wait_until(Duration::from_secs(60), || {
            TcpStream::connect(&addr).is_ok() && sock.exists()
        })?;
        let client = which("mariadb")?;
        let setup = format!(
            "CREATE USER '{ADMIN}'@'%' IDENTIFIED BY '{ADMIN_PASSWORD}'; \
             GRANT ALL PRIVILEGES ON *.* TO '{ADMIN}'@'%' WITH GRANT OPTION;"
        );
        run(
            &client.to_string_lossy(),
            &["--no-defaults", "-uroot", &format!("--socket={}", socket.display()), "-e", &setup],
        )?;
        Ok(Self {
            info: MariaDbInfo {
                host: options.listen.map_or_else(|| "127.0.0.1".into(), |ip| ip.to_string()),
                port,
                user: ADMIN.into(),
                password: ADMIN_PASSWORD.into(),
                ca_cert,
                socket,
            },
            _process: process,
        })
    }
}
