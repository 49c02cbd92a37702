//! `backup` and `restore`: what the operator's Jobs run, with the admin and
//! storage Secrets mounted as files.

use std::path::PathBuf;

use clap::Args;

use crate::api::{backup::BackupStorage, server::Engine, ConnectionSecretRef};
use crate::backup::dump::{self, DumpError, Job};
use crate::backup::storage::Storage;

/// Where the kubelet looks for a failed container's last words.
const TERMINATION_LOG: &str = "/dev/termination-log";

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// `postgres`, `mysql` or `mariadb`.
    #[arg(long, value_parser = ["postgres", "mysql", "mariadb"])]
    pub engine: String,
    /// The database dumped or restored into.
    #[arg(long)]
    pub database: String,
    /// The dump's key in the bucket.
    #[arg(long)]
    pub key: String,
    /// The admin Secret, mounted (one file per key).
    #[arg(long)]
    pub admin_secret_dir: PathBuf,
    /// The storage credentials Secret, mounted.
    #[arg(long)]
    pub storage_secret_dir: PathBuf,
    /// The server's `connectionSecretRef`, as JSON (which keys mean what).
    #[arg(long)]
    pub connection: String,
    /// The server's `backupStorage`, as JSON.
    #[arg(long)]
    pub storage: String,
    /// Restore on PostgreSQL: the role the restored objects belong to.
    #[arg(long)]
    pub role: Option<String>,
}

/// Runs a dump (`restore: false`) or a restore; the exit code.
pub async fn run(args: DumpArgs, restore: bool) -> i32 {
    match run_inner(&args, restore).await {
        Ok(message) => {
            println!("{message}");
            0
        }
        Err(message) => {
            eprintln!("error: {message}");
            // Read by the operator into the backup's status.
            let _ = std::fs::write(TERMINATION_LOG, &message);
            1
        }
    }
}

async fn run_inner(args: &DumpArgs, restore: bool) -> Result<String, String> {
    let engine = match args.engine.as_str() {
        "postgres" => Engine::Postgres,
        "mysql" => Engine::Mysql,
        _ => Engine::Mariadb,
    };
    let reference: ConnectionSecretRef =
        serde_json::from_str(&args.connection).map_err(|e| format!("--connection: {e}"))?;
    let spec: BackupStorage =
        serde_json::from_str(&args.storage).map_err(|e| format!("--storage: {e}"))?;
    let read = |dir: &PathBuf| {
        dump::read_secret_dir(dir).map_err(|e| {
            format!("cannot read the Secret mounted at {}: {}", dir.display(), e.kind())
        })
    };
    let admin = read(&args.admin_secret_dir)?;
    let info = crate::provision::connect::admin_conninfo(engine, "admin", &admin, &reference)
        .map_err(|e| e.to_string())?;
    let storage =
        Storage::open(&spec, &read(&args.storage_secret_dir)?).map_err(|e| e.to_string())?;
    let job = Job {
        engine,
        info: &info,
        database: &args.database,
        storage: &storage,
        key: &args.key,
        role: args.role.as_deref(),
    };
    let described = |e: DumpError| e.to_string();
    if restore {
        dump::restore(&job).await.map_err(described)?;
        Ok(format!("restored {} into {}", storage.destination(&args.key), args.database))
    } else {
        let size = dump::backup(&job).await.map_err(described)?;
        Ok(format!("{size} bytes written to {}", storage.destination(&args.key)))
    }
}
