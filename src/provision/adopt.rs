//! Whether a `Database` may act on what it finds on the server and in the
//! cluster (seed 003's table, made strict): what is absent is created, what
//! is recorded as this `Database`'s is kept, anything else is refused. A
//! password is never set on a user this `Database` does not own, and never
//! changed without the reset label.

use super::request::Request;

/// An object on the server as the operator found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub exists: bool,
    /// The uid of the `Database` the ownership record names, if any.
    pub recorded_owner: Option<String>,
}

/// The credentials Secret as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretFound {
    Absent,
    /// Owned by this `Database`; its password, if it holds one.
    Ours {
        password: Option<String>,
    },
    /// Someone else's Secret of that name.
    NotOurs,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdoptDecision {
    Proceed { create_user: bool, create_database: bool },
    Refuse(Refusal),
}

/// Why nothing is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    DatabaseTaken,
    UserTaken,
    SecretTaken,
    CredentialsLost,
}

impl Refusal {
    /// Stable reason, used as condition and Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::CredentialsLost => crate::reason::CREDENTIALS_LOST,
            _ => crate::reason::ALREADY_EXISTS,
        }
    }

    /// What went wrong, naming the objects (all from the spec).
    pub fn message(&self, request: &Request) -> String {
        match self {
            Self::DatabaseTaken => format!(
                "database {:?} already exists on the server and is not managed by this Database",
                request.database
            ),
            Self::UserTaken => format!(
                "user {:?} already exists on the server and is not managed by this Database",
                request.username
            ),
            Self::SecretTaken => format!(
                "Secret {:?} already exists and is not managed by this Database",
                request.secret_name
            ),
            Self::CredentialsLost => format!(
                "the password of user {:?} is no longer in Secret {:?}; label the Database \
                 dbqo.dev/action=reset-password to set a new one",
                request.username, request.secret_name
            ),
        }
    }
}

/// Decides for the `Database` with `uid`.
pub fn decide(
    uid: &str,
    database: &Found,
    user: &Found,
    secret: &SecretFound,
    reset_requested: bool,
) -> AdoptDecision {
    let ours = |found: &Found| found.recorded_owner.as_deref() == Some(uid);
    let taken = |found: &Found| match &found.recorded_owner {
        Some(owner) => owner != uid,
        // Present without a record: made by someone else.
        None => found.exists,
    };
    if taken(database) {
        return AdoptDecision::Refuse(Refusal::DatabaseTaken);
    }
    if taken(user) {
        return AdoptDecision::Refuse(Refusal::UserTaken);
    }
    let password = match secret {
        SecretFound::NotOurs => return AdoptDecision::Refuse(Refusal::SecretTaken),
        SecretFound::Absent => None,
        SecretFound::Ours { password } => password.as_ref(),
    };
    let user_exists = user.exists && ours(user);
    if user_exists && password.is_none() && !reset_requested {
        return AdoptDecision::Refuse(Refusal::CredentialsLost);
    }
    AdoptDecision::Proceed { create_user: !user.exists, create_database: !database.exists }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "uid-1";

    fn found(exists: bool, owner: Option<&str>) -> Found {
        Found { exists, recorded_owner: owner.map(str::to_owned) }
    }

    fn ours() -> SecretFound {
        SecretFound::Ours { password: Some("pw".into()) }
    }

    #[test]
    fn absent_everything_is_created() {
        assert_eq!(
            decide(UID, &found(false, None), &found(false, None), &SecretFound::Absent, false),
            AdoptDecision::Proceed { create_user: true, create_database: true }
        );
    }

    #[test]
    fn ours_is_kept_with_its_password() {
        assert_eq!(
            decide(UID, &found(true, Some(UID)), &found(true, Some(UID)), &ours(), false),
            AdoptDecision::Proceed { create_user: false, create_database: false }
        );
    }

    #[test]
    fn someone_elses_objects_are_refused() {
        for (db, user, secret) in [
            (found(true, None), found(false, None), SecretFound::Absent),
            (found(true, Some("other")), found(true, Some(UID)), ours()),
            (found(false, None), found(true, None), SecretFound::Absent),
            (found(false, Some(UID)), found(true, Some("other")), ours()),
            (found(false, None), found(false, None), SecretFound::NotOurs),
            // A record of another Database for an object not (yet) created.
            (found(false, Some("other")), found(false, None), SecretFound::Absent),
        ] {
            let verdict = decide(UID, &db, &user, &secret, true);
            assert!(
                matches!(verdict, AdoptDecision::Refuse(r) if r.reason() == "AlreadyExists"),
                "{db:?} {user:?} {secret:?}: {verdict:?}"
            );
        }
    }

    #[test]
    fn a_lost_password_is_never_reset_silently() {
        let lost = decide(
            UID,
            &found(true, Some(UID)),
            &found(true, Some(UID)),
            &SecretFound::Absent,
            false,
        );
        assert_eq!(lost, AdoptDecision::Refuse(Refusal::CredentialsLost));
        assert_eq!(
            decide(
                UID,
                &found(true, Some(UID)),
                &found(true, Some(UID)),
                &SecretFound::Absent,
                true
            ),
            AdoptDecision::Proceed { create_user: false, create_database: false }
        );
    }
}
