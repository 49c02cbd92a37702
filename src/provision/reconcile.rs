//! One provisioning pass of a `Database`, engine-agnostic: read, decide,
//! and run only the statements that change something. A converged
//! `Database` costs reads only; privileges are granted again only when the
//! spec's set differs from the recorded one (no REVOKE/GRANT per pass).

use crate::api::server::PasswordPolicy;

use super::adopt::{decide, AdoptDecision, Refusal, SecretFound};
use super::error::ServerError;
use super::password::{self, PolicyError};
use super::request::Request;
use super::session::{Claimant, Session};
use super::sql;

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provisioned {
    pub created_user: bool,
    pub created_database: bool,
    /// A new password was set (new user or reset); it is in `password`.
    pub new_password: bool,
    pub privileges_changed: bool,
    /// Privileges changed by hand were set back to the spec's.
    pub privileges_restored: bool,
    /// The database or the user was dropped by hand and created again.
    pub recreated: bool,
    pub extensions_created: Vec<String>,
    /// The password the credentials Secret must hold.
    pub password: String,
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{message}")]
    Refused { refusal: Refusal, message: String },
    #[error("spec.{field} cannot change once the database is provisioned: it is {was:?}, the spec now asks for {asked:?} (set it back; a new name is a new Database)")]
    Immutable { field: &'static str, was: String, asked: String },
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl ProvisionError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Refused { refusal, .. } => refusal.reason(),
            Self::Immutable { .. } => crate::reason::IMMUTABLE_FIELD,
            Self::Server(e) => e.reason(),
            Self::Policy(_) => crate::reason::SERVER_POLICY_INVALID,
        }
    }
}

fn refused(refusal: Refusal, request: &Request) -> ProvisionError {
    ProvisionError::Refused { refusal, message: refusal.message(request) }
}

/// What a pass will do, decided before anything changes. The password is
/// chosen here so that the caller can put it in the credentials Secret
/// before it is set on the server: a pass that fails between the two then
/// finds it there (a user created with a password no Secret holds would be
/// lost for good).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub create_user: bool,
    pub create_database: bool,
    /// `ALTER ... PASSWORD` on an existing user (the reset label).
    pub set_password: bool,
    /// The password the credentials Secret must hold.
    pub password: String,
    /// The privileges as recorded on the server.
    recorded_privileges: Option<String>,
    /// What is to be created was this `Database`'s before (dropped by hand).
    recreate: bool,
}

/// The names a `Database` was provisioned under (its status says), which
/// its spec may not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionedNames {
    pub database: String,
    pub username: String,
}

/// Reads the server and decides for the `Database` `claimant`, claiming in
/// the ownership records what it will create. `secret` is the credentials
/// Secret as found; `reset` asks for a new password; `before` the names it
/// was provisioned under.
pub async fn plan<S: Session>(
    session: &mut S,
    request: &Request,
    claimant: &Claimant,
    (secret, reset): (&SecretFound, bool),
    before: Option<&ProvisionedNames>,
    policy: &PasswordPolicy,
) -> Result<Planned, ProvisionError> {
    if let Some(before) = before {
        refuse_renaming(session, request, claimant, before).await?;
    }
    let mut observed = session.observe(request).await?;
    let ours = |found: &super::adopt::Found| found.recorded_owner.as_deref() == Some(&claimant.uid);
    let recreate = (ours(&observed.database) && !observed.database.exists)
        || (ours(&observed.user) && !observed.user.exists);
    let decide_now = |observed: &super::session::ServerObjects| {
        decide(&claimant.uid, &observed.database, &observed.user, secret, reset)
    };
    if let AdoptDecision::Refuse(refusal) = decide_now(&observed) {
        return Err(refused(refusal, request));
    }
    if observed.database.recorded_owner.is_none() || observed.user.recorded_owner.is_none() {
        // Claimed before anything is created: of two Databases naming the
        // same database, the one whose record lands first wins.
        observed = session.claim(request, claimant).await?;
    }
    let (create_user, create_database) = match decide_now(&observed) {
        AdoptDecision::Refuse(refusal) => return Err(refused(refusal, request)),
        AdoptDecision::Proceed { create_user, create_database, .. } => {
            (create_user, create_database)
        }
    };
    // The Secret's password is kept unless a reset asks for a new one; for
    // a user still to be created it is one an earlier pass chose and saved
    // before failing.
    let password = match secret {
        SecretFound::Ours { password: Some(password) } if !reset => password.clone(),
        _ => password::generate(policy)?,
    };
    Ok(Planned {
        create_user,
        create_database,
        set_password: reset && !create_user,
        password,
        recorded_privileges: observed.privileges,
        recreate,
    })
}

/// A `databaseName` or `username` other than the one provisioned is
/// refused while the ownership records name this `Database` as the owner
/// of the old one: going ahead would create a second database and user and
/// leave the first behind. Names the records do not give to this
/// `Database` (a pass refused with `AlreadyExists`) may still change.
async fn refuse_renaming<S: Session>(
    session: &mut S,
    request: &Request,
    claimant: &Claimant,
    before: &ProvisionedNames,
) -> Result<(), ProvisionError> {
    let (field, was, asked) = if before.database != request.database {
        ("databaseName", &before.database, &request.database)
    } else if before.username != request.username {
        ("username", &before.username, &request.username)
    } else {
        return Ok(());
    };
    let mut old = request.clone();
    old.database.clone_from(&before.database);
    old.username.clone_from(&before.username);
    let seen = session.observe(&old).await?;
    let ours = |found: &super::adopt::Found| found.recorded_owner.as_deref() == Some(&claimant.uid);
    if ours(&seen.database) || ours(&seen.user) {
        return Err(ProvisionError::Immutable { field, was: was.clone(), asked: asked.clone() });
    }
    Ok(())
}

/// Runs what `planned` decided, and whatever privileges and extensions the
/// spec asks for that the server does not have yet.
pub async fn carry_out<S: Session>(
    session: &mut S,
    request: &Request,
    planned: &Planned,
) -> Result<Provisioned, ServerError> {
    let engine = request.engine;
    if planned.create_user {
        session.execute(&[sql::create_user(engine, &request.username, &planned.password)]).await?;
    } else if planned.set_password {
        session.execute(&[sql::set_password(engine, &request.username, &planned.password)]).await?;
    }
    if planned.create_database {
        session.execute(&sql::create_database(request)).await?;
    }
    // The spec's set against the recorded one, then against the catalogs:
    // a change by hand (or a database or user created again) is restored.
    let wanted = request.privileges_text();
    let privileges_changed = planned.recorded_privileges.as_deref() != Some(wanted.as_str());
    let as_asked = !privileges_changed && session.privileges_as_asked(request).await?;
    if !as_asked {
        session.grant(request, planned.recorded_privileges.is_some()).await?;
        if privileges_changed {
            session.record_privileges(request, &wanted).await?;
        }
    }
    let missing = session.missing_extensions(request).await?;
    if !missing.is_empty() {
        let statements: Vec<String> = missing
            .iter()
            .map(|e| format!("CREATE EXTENSION IF NOT EXISTS {}", sql::pg_ident(e)))
            .collect();
        session.execute_inside(request, &statements).await?;
    }
    Ok(Provisioned {
        created_user: planned.create_user,
        created_database: planned.create_database,
        new_password: planned.create_user || planned.set_password,
        privileges_changed,
        privileges_restored: !as_asked && !privileges_changed && !planned.recreate,
        recreated: planned.recreate,
        extensions_created: missing,
        password: planned.password.clone(),
    })
}

/// What deleting with `Delete` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    pub database: bool,
    pub user: bool,
}

/// Drops the database and the user, each only if recorded as `uid`'s, then
/// their records.
pub async fn drop_owned<S: Session>(
    session: &mut S,
    request: &Request,
    uid: &str,
) -> Result<Dropped, ServerError> {
    let observed = session.observe(request).await?;
    let ours = |owner: &Option<String>| owner.as_deref() == Some(uid);
    let statements = sql::drop_all(request);
    let mut dropped = Dropped::default();
    if ours(&observed.database.recorded_owner) {
        session.execute(&statements[..1]).await?;
        dropped.database = observed.database.exists;
    }
    if ours(&observed.user.recorded_owner) {
        session.execute(&statements[1..]).await?;
        dropped.user = observed.user.exists;
    }
    session.forget(request, uid).await?;
    Ok(dropped)
}
