//! Generated passwords: drawn from the operating system's CSPRNG through
//! `rand`'s thread generator (ChaCha, seeded and reseeded from the OS).

use rand::seq::IndexedRandom;

use crate::api::server::PasswordPolicy;

/// A password policy that cannot produce a usable password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("passwordPolicy.alphabet has {0} distinct characters; at least 10 are needed")]
    AlphabetTooSmall(usize),
    #[error("passwordPolicy.alphabet may hold only printable ASCII characters other than space")]
    AlphabetNotPrintable,
    #[error("passwordPolicy.length is {0}; it must be between 12 and 128")]
    Length(u32),
}

/// The alphabet of `policy` as distinct characters, checked.
fn alphabet(policy: &PasswordPolicy) -> Result<Vec<char>, PolicyError> {
    if !policy.alphabet.chars().all(|c| c.is_ascii_graphic()) {
        return Err(PolicyError::AlphabetNotPrintable);
    }
    let mut chars: Vec<char> = policy.alphabet.chars().collect();
    chars.sort_unstable();
    chars.dedup();
    if chars.len() < 10 {
        return Err(PolicyError::AlphabetTooSmall(chars.len()));
    }
    if !(12..=128).contains(&policy.length) {
        return Err(PolicyError::Length(policy.length));
    }
    Ok(chars)
}

/// Checks a policy without generating anything.
pub fn check(policy: &PasswordPolicy) -> Result<(), PolicyError> {
    alphabet(policy).map(|_| ())
}

/// A new password following `policy`.
pub fn generate(policy: &PasswordPolicy) -> Result<String, PolicyError> {
    let chars = alphabet(policy)?;
    let mut rng = rand::rng();
    Ok((0..policy.length)
        .map(|_| *chars.choose(&mut rng).expect("the alphabet is not empty"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(length: u32, alphabet: &str) -> PasswordPolicy {
        PasswordPolicy { length, alphabet: alphabet.into() }
    }

    #[test]
    fn follows_length_and_alphabet() {
        let p = policy(40, "abc'\"\\;$`-_%");
        let password = generate(&p).unwrap();
        assert_eq!(password.chars().count(), 40);
        assert!(password.chars().all(|c| p.alphabet.contains(c)));
        assert_ne!(password, generate(&p).unwrap(), "two passwords differ");
    }

    #[test]
    fn default_policy_is_usable() {
        let password = generate(&PasswordPolicy::default()).unwrap();
        assert_eq!(password.len(), 32);
        assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn bad_policies_are_refused() {
        assert_eq!(generate(&policy(32, "aaaaabbbbb")), Err(PolicyError::AlphabetTooSmall(2)));
        assert_eq!(generate(&policy(32, "abcdefghij k")), Err(PolicyError::AlphabetNotPrintable));
        assert_eq!(generate(&policy(8, "abcdefghijk")), Err(PolicyError::Length(8)));
    }
}
