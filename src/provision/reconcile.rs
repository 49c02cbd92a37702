//! One provisioning pass of a `Database`, engine-agnostic: read, decide,
//! and run only the statements that change something. A converged
//! `Database` costs reads only; privileges are granted again only when the
//! spec's set differs from the recorded one (no REVOKE/GRANT per pass).

use crate::api::server::PasswordPolicy;

use super::adopt::{decide, Refusal, SecretFound, Verdict};
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
    pub extensions_created: Vec<String>,
    /// The password the credentials Secret must hold.
    pub password: String,
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{message}")]
    Refused { refusal: Refusal, message: String },
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl ProvisionError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Refused { refusal, .. } => refusal.reason(),
            Self::Server(e) => e.reason(),
            Self::Policy(_) => "ServerPolicyInvalid",
        }
    }
}

fn refused(refusal: Refusal, request: &Request) -> ProvisionError {
    ProvisionError::Refused {
        refusal,
        message: refusal.message(request),
    }
}

/// Brings the server in line with `request` for the `Database` `claimant`.
/// `secret` is the credentials Secret as found; `reset` asks for a new password.
pub async fn provision<S: Session>(
    session: &mut S,
    request: &Request,
    claimant: &Claimant,
    secret: &SecretFound,
    reset: bool,
    policy: &PasswordPolicy,
) -> Result<Provisioned, ProvisionError> {
    let mut observed = session.observe(request).await?;
    let mut verdict = decide(
        &claimant.uid,
        &observed.database,
        &observed.user,
        secret,
        reset,
    );
    if let Verdict::Refuse(refusal) = verdict {
        return Err(refused(refusal, request));
    }
    if observed.database.recorded_owner.is_none() || observed.user.recorded_owner.is_none() {
        // Claimed before anything is created: of two Databases naming the
        // same database, the one whose record lands first wins.
        observed = session.claim(request, claimant).await?;
        verdict = decide(
            &claimant.uid,
            &observed.database,
            &observed.user,
            secret,
            reset,
        );
    }
    let Verdict::Proceed {
        create_user,
        create_database,
        new_password,
    } = verdict
    else {
        let Verdict::Refuse(refusal) = verdict else {
            unreachable!()
        };
        return Err(refused(refusal, request));
    };
    let password = match (new_password, secret) {
        (false, SecretFound::Ours { password: Some(p) }) => p.clone(),
        _ => password::generate(policy)?,
    };
    let engine = request.engine;
    if create_user {
        session
            .execute(&[sql::create_user(engine, &request.username, &password)])
            .await?;
    } else if new_password {
        session
            .execute(&[sql::set_password(engine, &request.username, &password)])
            .await?;
    }
    if create_database {
        session.execute(&sql::create_database(request)).await?;
    }
    let wanted = request.privileges_text();
    let privileges_changed = observed.privileges.as_deref() != Some(wanted.as_str());
    if privileges_changed {
        let replace = observed.privileges.is_some();
        session
            .execute(&sql::database_privileges(request, replace))
            .await?;
        if engine == crate::api::server::Engine::Postgres {
            session
                .execute_inside(request, &sql::pg_schema_privileges(request, replace))
                .await?;
        }
        session.record_privileges(request, &wanted).await?;
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
        created_user: create_user,
        created_database: create_database,
        new_password: create_user || new_password,
        privileges_changed,
        extensions_created: missing,
        password,
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
