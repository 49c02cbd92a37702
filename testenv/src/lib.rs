//! A real test environment on loopback: etcd + kube-apiserver +
//! kube-controller-manager, PostgreSQL and (per test) MariaDB, started from Rust.
//!
//! `testenv run -- <command>` starts one environment for a whole test run and
//! hands it to every test process through `DBQO_TESTENV`; [`shared`] reads
//! it, or starts a private one for the current process when the variable is
//! unset (plain `cargo test`). Servers die with the process that started them
//! (see [`process`]).
#![forbid(unsafe_code)]

pub mod control_plane;
pub mod faults;
pub mod mariadb;
pub mod node;
pub mod postgres;
pub mod process;
pub mod reliability;
pub mod s3;

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use serde::{Deserialize, Serialize};

pub use control_plane::{ControlPlane, ControlPlaneInfo};
pub use mariadb::{MariaDb, MariaDbInfo, MariaDbOptions};
pub use node::{Node, NodeInfo};
pub use postgres::{Postgres, PostgresInfo, PostgresOptions};
pub use s3::S3Server;

/// Environment variable naming the JSON file that describes a running environment.
pub const ENV_VAR: &str = "DBQO_TESTENV";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Msg(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    pub(crate) fn msg(message: impl Into<String>) -> Self {
        Self::Msg(message.into())
    }
}

/// Where everything of one environment lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvInfo {
    pub control_plane: ControlPlaneInfo,
    /// A PostgreSQL with TLS enabled (plain connections work too).
    pub postgres: PostgresInfo,
}

/// A running environment owned by this process.
pub struct TestEnv {
    pub info: EnvInfo,
    pub control_plane: ControlPlane,
    pub postgres: Postgres,
    pub dir: PathBuf,
}

impl TestEnv {
    /// Starts the control plane and PostgreSQL under `dir`.
    pub fn start(dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let assets = assets()?;
        // Both start in parallel: the control plane takes the longest.
        let pg_dir = dir.join("postgres");
        let pg = std::thread::spawn(move || {
            Postgres::start(&pg_dir, PostgresOptions { tls: true, ..PostgresOptions::default() })
        });
        let control_plane = ControlPlane::start(&dir.join("kube"), &assets)?;
        let postgres = pg.join().map_err(|_| Error::msg("postgres start-up panicked"))??;
        Ok(Self {
            info: EnvInfo {
                control_plane: control_plane.info.clone(),
                postgres: postgres.info.clone(),
            },
            control_plane,
            postgres,
            dir: dir.to_owned(),
        })
    }
}

/// The environment of this test run: the one `testenv run` started, or one
/// started for this process on first use.
pub fn shared() -> &'static EnvInfo {
    static SHARED: OnceLock<EnvInfo> = OnceLock::new();
    static OWNED: OnceLock<TestEnv> = OnceLock::new();
    SHARED.get_or_init(|| {
        if let Ok(path) = std::env::var(ENV_VAR) {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {ENV_VAR}={path}: {e}"));
            return serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"));
        }
        let dir = run_dir();
        let env =
            TestEnv::start(&dir).unwrap_or_else(|e| panic!("start the test environment: {e}"));
        let info = env.info.clone();
        let _ = OWNED.set(env);
        info
    })
}

/// A fresh directory for one environment under the system temp dir; stale
/// directories of earlier runs whose owner process is gone are removed.
pub fn run_dir() -> PathBuf {
    let base = std::env::temp_dir().join("dbqo-testenv");
    if let Ok(entries) = std::fs::read_dir(&base) {
        for entry in entries.flatten() {
            let pid = entry
                .file_name()
                .to_string_lossy()
                .split('-')
                .next()
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    base.join(format!("{}-{unique}", std::process::id()))
}

/// The directory holding etcd, kube-apiserver and kube-controller-manager:
/// `KUBEBUILDER_ASSETS` when it holds them, otherwise what the project's
/// provisioning script builds and caches.
/// The repository's root, found when the program runs. A build cached from
/// another checkout of the repository (a shared target directory) must not
/// point into that checkout: the path compiled in is the last resort.
pub fn repo_root() -> PathBuf {
    let is_root = |dir: &Path| dir.join("hack/provision.sh").is_file();
    // Cargo and nextest set CARGO_MANIFEST_DIR for the test they run: a
    // package directory directly under the root.
    let from_test = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|dir| dir.parent().map(Path::to_path_buf));
    let from_cwd = std::env::current_dir()
        .ok()
        .and_then(|dir| dir.ancestors().find(|d| is_root(d)).map(Path::to_path_buf));
    from_test
        .filter(|dir| is_root(dir))
        .or(from_cwd)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

pub fn assets() -> Result<PathBuf, Error> {
    let complete = |dir: &Path| {
        ["etcd", "kube-apiserver", "kube-controller-manager"].iter().all(|b| dir.join(b).exists())
    };
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from) {
        if complete(&dir) {
            return Ok(dir);
        }
    }
    let script = repo_root().join("hack/provision.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| Error::io(format!("run {}", script.display()), e))?;
    if !output.status.success() {
        return Err(Error::msg(format!("{} failed ({})", script.display(), output.status)));
    }
    let dir = String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| Error::msg("provisioning printed no assets directory"))?;
    if complete(&dir) {
        Ok(dir)
    } else {
        Err(Error::msg(format!("{} lacks the control-plane binaries", dir.display())))
    }
}
