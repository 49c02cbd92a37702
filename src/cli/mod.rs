//! Command-line interface: one binary, one subcommand per job.

mod backup;
mod crd;
mod diff;
mod policy;
mod render;
mod run;

use clap::{Parser, Subcommand};

pub use backup::DumpArgs;
pub use crd::{all_crds_yaml, crd_yaml, crd_yaml_of, crds};
pub use diff::DiffArgs;
pub use policy::PolicyArgs;
pub use render::{load_dbqr, DbqrFileError, RenderArgs};
pub use run::{default_lease_name, LogFormat, RunArgs};

/// Turns rows of a SQL database into Kubernetes objects and keeps them in step.
#[derive(Debug, Parser)]
#[command(name = "db-query-operator", version, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions as YAML: every one (one
    /// `kubectl apply -f -` installs them all), or the one named
    /// (`databasequeryresources`, `databaseservers`, `databases` or `databasebackups`).
    Crd {
        #[arg(value_parser = ["databasequeryresources", "databaseservers", "databases", "databasebackups"])]
        plural: Option<String>,
    },
    /// Preview the objects a DBQR would produce, offline: rows come from a
    /// JSON file or from running the DBQR's query against a live database.
    Render(RenderArgs),
    /// Show what applying a DBQR manifest would change in the live cluster:
    /// a unified diff per object, the objects it would create and prune.
    /// Writes nothing (server-side dry-run). Exit 0: no change, 1: changes,
    /// 2: error.
    Diff(DiffArgs),
    /// Print SQL installing a statement-level trigger that notifies CHANNEL on
    /// every INSERT, UPDATE, DELETE or TRUNCATE of TABLE (for `changeDetection.mode: notify`).
    TriggerSql {
        /// Table to watch; may be schema-qualified (`app.flags`).
        #[arg(long)]
        table: String,
        /// Channel the DBQR listens on (`spec.changeDetection.channel`).
        #[arg(long)]
        channel: String,
        /// Carry the changed values of this column in each notification (a
        /// JSON array of text; empty for TRUNCATE or too many keys).
        #[arg(long, value_name = "COLUMN")]
        key_column: Option<String>,
    },
    /// Run the operator (kubeconfig from KUBECONFIG or ~/.kube/config, or in-cluster).
    Run(RunArgs),
    /// Dump a database to object storage (what the operator's backup Jobs run):
    /// `pg_dump -Fc` or `mariadb-dump`, streamed to the bucket in parts.
    Backup(DumpArgs),
    /// Restore a dump from object storage into a database (what the
    /// operator's restore Jobs run): `pg_restore` or `mariadb`, streamed.
    Restore(DumpArgs),
}

fn dump(args: DumpArgs, restore: bool) -> i32 {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(backup::run(args, restore)),
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            1
        }
    }
}

/// Runs the parsed command; returns the process exit code. `operator` runs
/// the `run` subcommand: the actor system lives outside this crate.
pub fn run(cli: Cli, operator: impl FnOnce(RunArgs) -> i32) -> i32 {
    let tokio = || tokio::runtime::Builder::new_current_thread().enable_all().build();
    match cli.command {
        Command::Crd { plural: Some(plural) } => {
            print!("{}", crd_yaml_of(&plural).unwrap_or_default());
            0
        }
        Command::Crd { plural: None } => {
            print!("{}", all_crds_yaml());
            0
        }
        Command::TriggerSql { table, channel, key_column: None } => {
            print!("{}", crate::sql::notify_trigger_sql(&table, &channel));
            0
        }
        Command::TriggerSql { table, channel, key_column: Some(key) } => {
            print!("{}", crate::sql::notify_keys_trigger_sql(&table, &channel, &key));
            0
        }
        Command::Render(args) => match tokio() {
            Ok(rt) => rt.block_on(render::run(args)),
            Err(e) => {
                eprintln!("error: cannot start a runtime: {e}");
                1
            }
        },
        Command::Diff(args) => match tokio() {
            Ok(rt) => rt.block_on(diff::run(args)),
            Err(e) => {
                eprintln!("error: cannot start a runtime: {e}");
                2
            }
        },
        Command::Run(args) => operator(args),
        Command::Backup(args) => dump(args, false),
        Command::Restore(args) => dump(args, true),
    }
}
