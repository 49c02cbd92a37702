//! libpq connection strings (URI or `key=value` form) with the TLS settings
//! tokio-postgres does not understand itself (`sslmode=verify-ca|verify-full`,
//! `sslrootcert`) taken out and handled here.

use std::str::FromStr;

/// TLS behaviour as libpq defines `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it, no verification; plain TCP otherwise.
    #[default]
    Prefer,
    /// TLS, no verification of the certificate.
    Require,
    /// TLS, certificate chain verified against the CA, host name not checked.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => Self::Disable,
            // libpq's `allow` tries plain first; the closest safe reading is prefer.
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return Err(ConnInfoError::SslMode),
        })
    }
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// Where the CA bundle for verification comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// `sslrootcert=<path>` in the connection string.
    File(String),
    /// PEM text, e.g. from a Secret's `caCertKey`.
    Pem(Vec<u8>),
    /// `sslrootcert=system`: the system's CA store (libpq 16).
    System,
}

/// A parsed connection string.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub config: tokio_postgres::Config,
    pub ssl_mode: SslMode,
    pub root_cert: Option<RootCert>,
}

impl ConnInfo {
    /// The sslmode in force: with `sslrootcert=system` and no stronger mode
    /// asked for, libpq verifies fully (a public CA signs certificates for
    /// anyone, so only the host name check makes it safe).
    pub fn effective_ssl_mode(&self) -> SslMode {
        match (self.ssl_mode, &self.root_cert) {
            (SslMode::Prefer, Some(RootCert::System)) => SslMode::VerifyFull,
            (mode, _) => mode,
        }
    }
}

/// A connection string that cannot be used. Never carries the password.
#[derive(Debug, thiserror::Error)]
pub enum ConnInfoError {
    // The value is not quoted: a Secret key mapped onto `sslModeKey` may hold anything.
    #[error(
        "unsupported sslmode (expected disable, allow, prefer, require, verify-ca or verify-full)"
    )]
    SslMode,
    #[error("{0} names a file on the operator's filesystem, which is not supported (a CA bundle comes from caCertKey)")]
    FileParameter(&'static str),
    #[error("invalid connection string: {0}")]
    Invalid(String),
}

impl ConnInfoError {
    pub fn reason(&self) -> &'static str {
        crate::reason::INVALID_CONNECTION_STRING
    }
}

const TLS_KEYS: [&str; 2] = ["sslmode", "sslrootcert"];

/// libpq parameters that make the client read a file of its own (a key, a
/// certificate, a password file, a service file). A connection string
/// comes from a tenant's Secret: the operator's filesystem is not theirs.
const FILE_KEYS: [&str; 8] = [
    "sslcert",
    "sslkey",
    "sslcrl",
    "sslcrldir",
    "sslpassword",
    "passfile",
    "service",
    "servicefile",
];

fn refuse_file_key(key: &str) -> Result<(), ConnInfoError> {
    match FILE_KEYS.iter().find(|k| **k == key) {
        Some(k) => Err(ConnInfoError::FileParameter(k)),
        None => Ok(()),
    }
}

impl FromStr for ConnInfo {
    type Err = ConnInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rest, tls) = if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            split_uri(s)?
        } else {
            split_key_value(s)?
        };
        let config = tokio_postgres::Config::from_str(&rest).map_err(|e| parse_error(&e))?;
        let mut info = ConnInfo { config, ssl_mode: SslMode::default(), root_cert: None };
        for (key, value) in tls {
            match key.as_str() {
                "sslmode" => info.ssl_mode = value.parse()?,
                _ if value == "system" => info.root_cert = Some(RootCert::System),
                _ => info.root_cert = Some(RootCert::File(value)),
            }
        }
        Ok(info)
    }
}

/// tokio-postgres' parse error, without what it quotes of the input: an
/// "unknown option" can be the tail of a password holding `?`, `&` or `=`.
/// Only its "invalid value for option `<name>`" names one of its own options.
fn parse_error(e: &tokio_postgres::Error) -> ConnInfoError {
    let text = e.to_string();
    let known = text
        .split_once("invalid value for option `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(name, _)| name)
        .filter(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
    ConnInfoError::Invalid(match known {
        Some(option) => format!("invalid value for option {option}"),
        None => "cannot parse it (in a URI, percent-encode any of : / ? # @ & = in the user \
                 name or password)"
            .into(),
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() + 1 {
            if let Some(b) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

type Split = (String, Vec<(String, String)>);

fn split_uri(s: &str) -> Result<Split, ConnInfoError> {
    let Some((base, query)) = s.split_once('?') else {
        return Ok((s.to_owned(), Vec::new()));
    };
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        refuse_file_key(k)?;
        if TLS_KEYS.contains(&k) {
            tls.push((k.to_owned(), percent_decode(v)));
        } else {
            kept.push(pair);
        }
    }
    let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((rest, tls))
}

/// Splits libpq `key = value` text, honouring single quotes and backslash escapes.
fn split_key_value(s: &str) -> Result<Split, ConnInfoError> {
    let mut kept = Vec::new();
    let mut tls = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let key: String =
            std::iter::from_fn(|| chars.next_if(|c| *c != '=' && !c.is_whitespace())).collect();
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            // The "key" may be the tail of a password with a space in it.
            return Err(ConnInfoError::Invalid(
                "a word without \"=\" (quote values that hold spaces: password='...')".into(),
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(ConnInfoError::Invalid(
                            "a quoted value is not terminated".into(),
                        ))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        refuse_file_key(&key)?;
        if TLS_KEYS.contains(&key.as_str()) {
            tls.push((key, value));
        } else {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok((kept.join(" "), tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_keeps_libpq_parameters_and_takes_out_tls_ones() {
        let info: ConnInfo = "postgresql://app:p%40ss@db.example:6432/main?sslmode=verify-full&sslrootcert=/ca.pem&application_name=dbqo&connect_timeout=7&options=-c%20search_path%3Dapp"
            .parse()
            .unwrap();
        assert_eq!(info.ssl_mode, SslMode::VerifyFull);
        assert_eq!(info.root_cert, Some(RootCert::File("/ca.pem".into())));
        assert_eq!(info.config.get_user(), Some("app"));
        assert_eq!(info.config.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(info.config.get_dbname(), Some("main"));
        assert_eq!(info.config.get_ports(), &[6432]);
        assert_eq!(info.config.get_application_name(), Some("dbqo"));
        assert_eq!(info.config.get_connect_timeout(), Some(&std::time::Duration::from_secs(7)));
        assert_eq!(info.config.get_options(), Some("-c search_path=app"));
    }

    #[test]
    fn key_value_form_is_understood() {
        let info: ConnInfo =
            "host=localhost port=5433 user=u password='it''s \\' x' dbname=d sslmode=require"
                .replace("''", "\\'")
                .parse()
                .unwrap();
        assert_eq!(info.ssl_mode, SslMode::Require);
        assert_eq!(info.config.get_password(), Some(&b"it's ' x"[..]));
        assert_eq!(info.config.get_ports(), &[5433]);
    }

    #[test]
    fn defaults_to_prefer_and_refuses_unknown_modes() {
        let info: ConnInfo = "postgresql://u@h/d".parse().unwrap();
        assert_eq!(info.ssl_mode, SslMode::Prefer);
        let err = "postgresql://u@h/d?sslmode=m4rker".parse::<ConnInfo>().unwrap_err();
        assert!(err.to_string().contains("unsupported sslmode"), "{err}");
        assert!(!err.to_string().contains("m4rker"), "{err}");
    }

    #[test]
    fn parameters_that_read_files_are_refused_by_name() {
        for (text, key) in [
            ("postgresql://u@h/d?sslkey=/etc/shadow", "sslkey"),
            ("postgresql://u@h/d?application_name=x&sslcert=/m4rker", "sslcert"),
            ("host=h user=u passfile=/m4rker", "passfile"),
            ("service=m4rker", "service"),
            ("postgresql://u@h/d?sslcrl=/m4rker", "sslcrl"),
        ] {
            let err = text.parse::<ConnInfo>().unwrap_err();
            assert!(matches!(err, ConnInfoError::FileParameter(k) if k == key), "{text}: {err}");
            assert!(!err.to_string().contains("m4rker"), "{err}");
        }
    }

    #[test]
    fn parse_errors_never_echo_the_input() {
        let mut refused = 0;
        for bad in [
            "postgresql://u:pa?m4rker=1@h/d",
            "postgresql://u:pa&m4rker@h/d?x=1&m4rker",
            "host=h password=pa m4rker",
            "host=h password='m4rker",
            "postgresql://u:m4rker@h:notaport/d",
        ] {
            // Some of these parse (into nonsense the server will refuse).
            if let Err(err) = bad.parse::<ConnInfo>() {
                refused += 1;
                assert!(!err.to_string().contains("m4rker"), "{bad}: {err}");
            }
        }
        assert!(refused >= 3, "{refused}");
    }
}
