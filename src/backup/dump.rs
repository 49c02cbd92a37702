//! What a backup or restore Job runs (`db-query-operator backup|restore`):
//! the engine's own client tool (`pg_dump -Fc` / `pg_restore`,
//! `mariadb-dump` / `mariadb`) with the admin connection in its environment,
//! its output streamed to the bucket in parts (or the dump streamed from the
//! bucket into it): the whole dump is never held in memory or in a file.
//!
//! The tool's own error text names hosts, users and the server's words; a
//! team reads the backup's status, so only the step and a category reach
//! the message, the rest stays in the Job's log for the platform team.

use std::{collections::BTreeMap, path::Path as FsPath, process::Stdio};

use futures_util::StreamExt;
use object_store::{path::Path, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::storage::{describe, Storage, StorageError};
use crate::api::server::Engine;
use crate::db::{ConnInfo, RootCert};

/// Bytes read from the tool per part written.
const CHUNK: usize = 1 << 16;
/// Parts in flight at once: bounds the memory of a dump of any size.
const PARTS_IN_FLIGHT: usize = 4;
/// The tail of the tool's stderr kept for the failure's category.
const STDERR_TAIL: usize = 16 << 10;

/// What went wrong, by step and category only.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("cannot start {tool}: {why}")]
    Spawn { tool: &'static str, why: String },
    #[error("{tool} failed ({category}); exit status {status}; its output is in the Job's log")]
    Tool { tool: &'static str, category: &'static str, status: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the admin connection: {0}")]
    Connection(String),
    #[error("the dump {0:?} does not exist")]
    NoDump(String),
}

/// Where a dump goes or comes from, and with what connection.
pub struct Job<'a> {
    pub engine: Engine,
    pub info: &'a ConnInfo,
    /// The database dumped or restored into.
    pub database: &'a str,
    pub storage: &'a Storage,
    pub key: &'a str,
    /// PostgreSQL restore: the role the restored objects belong to.
    pub role: Option<&'a str>,
}

/// Streams a dump of the database to the bucket; its size.
pub async fn backup(job: &Job<'_>) -> Result<u64, DumpError> {
    let mut tool = Tool::dump(job)?;
    let mut child = tool.command.spawn().map_err(|e| spawn_error(tool.name, &e))?;
    let mut stdout = child.stdout.take().expect("piped");
    let stderr = tail(child.stderr.take().expect("piped"));
    let path = Path::from(job.key);
    let upload = job
        .storage
        .store
        .put_multipart(&path)
        .await
        .map_err(|e| StorageError::Request(describe(&e)))?;
    let mut upload = WriteMultipart::new(upload);
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    let streamed: Result<(), DumpError> = async {
        loop {
            let n = stdout
                .read(&mut buf)
                .await
                .map_err(|e| DumpError::Spawn { tool: tool.name, why: e.to_string() })?;
            if n == 0 {
                return Ok(());
            }
            upload
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|e| StorageError::Request(describe(&e)))?;
            upload.write(&buf[..n]);
            size += n as u64;
        }
    }
    .await;
    let status = child.wait().await.map_err(|e| spawn_error(tool.name, &e))?;
    let stderr = stderr.await.unwrap_or_default();
    // The object appears only when the upload completes: a failed dump
    // leaves nothing a restore could mistake for one.
    if let Err(e) = streamed {
        let _ = upload.abort().await;
        return Err(e);
    }
    if !status.success() {
        let _ = upload.abort().await;
        return Err(tool.failed(&status, &stderr));
    }
    upload.finish().await.map_err(|e| StorageError::Request(describe(&e)))?;
    Ok(size)
}

/// Streams the dump from the bucket into the restore tool.
pub async fn restore(job: &Job<'_>) -> Result<(), DumpError> {
    if job.storage.size(job.key).await?.is_none() {
        return Err(DumpError::NoDump(job.key.to_owned()));
    }
    let mut tool = Tool::restore(job)?;
    let mut child = tool.command.spawn().map_err(|e| spawn_error(tool.name, &e))?;
    let mut stdin = child.stdin.take().expect("piped");
    let stderr = tail(child.stderr.take().expect("piped"));
    let mut stream = job
        .storage
        .store
        .get(&Path::from(job.key))
        .await
        .map_err(|e| StorageError::Request(describe(&e)))?
        .into_stream();
    let mut fed: Result<(), DumpError> = Ok(());
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                fed = Err(StorageError::Request(describe(&e)).into());
                break;
            }
        };
        // The tool stopped reading: its exit status says why.
        if stdin.write_all(&chunk).await.is_err() {
            break;
        }
    }
    drop(stdin);
    let status = child.wait().await.map_err(|e| spawn_error(tool.name, &e))?;
    let stderr = stderr.await.unwrap_or_default();
    if !status.success() {
        return Err(tool.failed(&status, &stderr));
    }
    fed
}

fn spawn_error(tool: &'static str, e: &std::io::Error) -> DumpError {
    DumpError::Spawn { tool, why: e.kind().to_string() }
}

/// The last [`STDERR_TAIL`] bytes of a stream, echoed to our own stderr
/// (the Job's log) as they come.
fn tail(
    mut stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let _ = tokio::io::stderr().write_all(&buf[..n]).await;
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > STDERR_TAIL {
                kept.drain(..kept.len() - STDERR_TAIL);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// A client tool, ready to spawn: the connection in its environment (never
/// in its arguments, which `ps` shows).
struct Tool {
    name: &'static str,
    command: tokio::process::Command,
}

impl Tool {
    fn dump(job: &Job<'_>) -> Result<Self, DumpError> {
        match job.engine {
            Engine::Postgres => {
                let mut command = pg_command("pg_dump", job)?;
                command.args(["--format=custom", "--no-password"]);
                command.stdout(Stdio::piped());
                Ok(Self { name: "pg_dump", command })
            }
            _ => {
                let mut command = my_command("mariadb-dump", job)?;
                command.args(["--single-transaction", "--routines", "--triggers", "--events"]);
                command.arg(job.database);
                command.stdout(Stdio::piped());
                Ok(Self { name: "mariadb-dump", command })
            }
        }
    }

    fn restore(job: &Job<'_>) -> Result<Self, DumpError> {
        match job.engine {
            Engine::Postgres => {
                let mut command = pg_command("pg_restore", job)?;
                command.args(["--no-password", "--no-owner", "--no-privileges", "--exit-on-error"]);
                if let Some(role) = job.role {
                    command.arg(format!("--role={role}"));
                }
                command.arg(format!("--dbname={}", job.database));
                command.stdin(Stdio::piped());
                Ok(Self { name: "pg_restore", command })
            }
            _ => {
                let mut command = my_command("mariadb", job)?;
                command.arg(job.database);
                command.stdin(Stdio::piped());
                Ok(Self { name: "mariadb", command })
            }
        }
    }

    fn failed(&self, status: &std::process::ExitStatus, stderr: &str) -> DumpError {
        DumpError::Tool { tool: self.name, category: category(stderr), status: status.to_string() }
    }
}

/// What kind of failure a tool's output describes, in our words.
fn category(stderr: &str) -> &'static str {
    let text = stderr.to_ascii_lowercase();
    if text.contains("password authentication failed") || text.contains("access denied") {
        "authentication failed"
    } else if text.contains("could not connect")
        || text.contains("connection refused")
        || text.contains("can't connect")
        || text.contains("timeout expired")
    {
        "cannot connect to the server"
    } else if text.contains("permission denied") || text.contains("must be owner") {
        "permission denied"
    } else if text.contains("does not exist") || text.contains("unknown database") {
        "the database does not exist"
    } else if text.contains("input file") || text.contains("not a valid archive") {
        "the dump is not readable"
    } else {
        "see the Job's log"
    }
}

fn host_and_port(info: &ConnInfo, default_port: u16) -> Result<(String, u16), DumpError> {
    let host = match info.config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => return Err(DumpError::Connection("no TCP host in the admin Secret".into())),
    };
    Ok((host, info.config.get_ports().first().copied().unwrap_or(default_port)))
}

fn password(info: &ConnInfo) -> String {
    info.config.get_password().map(|p| String::from_utf8_lossy(p).into_owned()).unwrap_or_default()
}

/// The CA of the admin Secret as a file the tool can read.
fn ca_file(info: &ConnInfo) -> Result<Option<String>, DumpError> {
    match &info.root_cert {
        Some(RootCert::Pem(pem)) => {
            let path = std::env::temp_dir().join(format!("dbqo-ca-{}.pem", std::process::id()));
            std::fs::write(&path, pem).map_err(|e| {
                DumpError::Connection(format!("cannot write the CA file: {}", e.kind()))
            })?;
            Ok(Some(path.display().to_string()))
        }
        Some(RootCert::File(path)) => Ok(Some(path.clone())),
        Some(RootCert::System) => Ok(Some("system".into())),
        None => Ok(None),
    }
}

/// `PATH` with Debian's newest PostgreSQL client directory first: its
/// `/usr/bin/pg_dump` is a Perl wrapper choosing a version, and the image
/// has the client tools but no Perl modules beyond the base.
fn pg_path() -> String {
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .max();
    match newest {
        Some(version) => format!("/usr/lib/postgresql/{version}/bin:{path}"),
        None => path,
    }
}

fn pg_command(tool: &'static str, job: &Job<'_>) -> Result<tokio::process::Command, DumpError> {
    let info = job.info;
    let (host, port) = host_and_port(info, 5432)?;
    let path = pg_path();
    let tool = std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| tool.into());
    let mut command = tokio::process::Command::new(tool);
    command
        .env_clear()
        .env("PATH", path)
        .env("PGHOST", host)
        .env("PGPORT", port.to_string())
        .env("PGUSER", info.config.get_user().unwrap_or_default())
        .env("PGPASSWORD", password(info))
        .env("PGDATABASE", job.database)
        .env("PGSSLMODE", info.effective_ssl_mode().as_str())
        .env("PGCONNECT_TIMEOUT", "10")
        .env("PGAPPNAME", "db-query-operator-backup")
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(ca) = ca_file(info)? {
        command.env("PGSSLROOTCERT", ca);
    }
    Ok(command)
}

fn my_command(tool: &'static str, job: &Job<'_>) -> Result<tokio::process::Command, DumpError> {
    let info = job.info;
    let (host, port) = host_and_port(info, 3306)?;
    let mut command = tokio::process::Command::new(tool);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()))
        // MYSQL_PWD keeps the password out of the arguments.
        .env("MYSQL_PWD", password(info))
        .arg(format!("--host={host}"))
        .arg(format!("--port={port}"))
        .arg(format!("--user={}", info.config.get_user().unwrap_or_default()))
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if tool == "mariadb" {
        // mariadb-dump does not take this option; the client does.
        command.arg("--connect-timeout=10");
    }
    let ca = ca_file(info)?;
    match (info.effective_ssl_mode(), ca) {
        (crate::db::SslMode::Disable, _) => {
            command.arg("--skip-ssl");
        }
        (crate::db::SslMode::VerifyFull, Some(ca)) => {
            command.arg(format!("--ssl-ca={ca}")).arg("--ssl-verify-server-cert");
        }
        (crate::db::SslMode::VerifyCa | crate::db::SslMode::Require, Some(ca)) => {
            command.arg(format!("--ssl-ca={ca}"));
        }
        _ => {
            command.arg("--ssl");
        }
    }
    Ok(command)
}

/// A mounted Secret (one file per key) as the data the operator reads.
pub fn read_secret_dir(dir: &FsPath) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let mut data = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // The kubelet's own entries (`..data`, the timestamped directory).
        if name.starts_with("..") || !entry.path().is_file() {
            continue;
        }
        data.insert(name, std::fs::read(entry.path())?);
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_told_by_category_never_by_the_tools_words() {
        let stderr = "pg_dump: error: connection to server at \"db.secret.internal\" (10.0.0.7), port 5432 failed: FATAL:  password authentication failed for user \"provisioner\"";
        let e = DumpError::Tool {
            tool: "pg_dump",
            category: category(stderr),
            status: "exit status: 1".into(),
        };
        let text = e.to_string();
        assert!(text.contains("authentication failed"), "{text}");
        assert!(!text.contains("secret.internal") && !text.contains("provisioner"), "{text}");
        assert_eq!(
            category("mariadb-dump: Got error: 1049: Unknown database 'x'"),
            "the database does not exist"
        );
        assert_eq!(category("something else entirely"), "see the Job's log");
    }

    #[test]
    fn a_mounted_secret_reads_as_its_keys() {
        let dir = std::env::temp_dir().join(format!("dbqo-secret-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("..2026_12_03")).unwrap();
        std::fs::write(dir.join("password"), b"p").unwrap();
        std::fs::write(dir.join("host"), b"h").unwrap();
        let data = read_secret_dir(&dir).unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), vec!["host", "password"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
