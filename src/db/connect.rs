//! Opens a PostgreSQL connection with TLS behaving as libpq's `sslmode` says.

use native_tls::{Certificate, TlsConnector};
use postgres_native_tls::MakeTlsConnector;
use tokio_postgres::{config::SslMode as WireSslMode, Client};

use super::conninfo::{ConnInfo, RootCert, SslMode};

/// Connecting failed. The message never holds the password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read CA bundle {path}: {source}")]
    ReadRootCert {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid CA bundle: {0}")]
    RootCert(#[source] native_tls::Error),
    #[error("cannot set up TLS: {0}")]
    Tls(#[source] native_tls::Error),
    #[error("sslmode={0} verifies the server against a CA, and none is given: set caCertKey (a CA bundle in the Secret), or sslrootcert=system with sslmode=verify-full for the system's CA store")]
    RootCertRequired(&'static str),
    #[error("sslrootcert=system trusts every public CA, so it needs sslmode=verify-full (which checks the host name), not {0}")]
    WeakModeWithSystemRoots(&'static str),
    #[error("authentication failed: {0}")]
    Authentication(String),
    #[error("the database server has no connection to spare: {0}")]
    TooManyConnections(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The server (or something on the way) accepted the connection and
    /// never finished the handshake.
    #[error(transparent)]
    Unanswered(#[from] super::deadline::Unanswered),
}

impl ConnectError {
    /// Stable reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ReadRootCert { .. }
            | Self::RootCert(_)
            | Self::Tls(_)
            | Self::RootCertRequired(_)
            | Self::WeakModeWithSystemRoots(_) => crate::reason::TLS_CONFIG_ERROR,
            Self::Authentication(_) => crate::reason::AUTHENTICATION_FAILED,
            Self::TooManyConnections(_) => crate::reason::TOO_MANY_CONNECTIONS,
            Self::Connect(_) => crate::reason::CONNECTION_FAILED,
            Self::Unanswered(e) => e.reason(),
        }
    }
}

/// What to verify of the server's certificate.
enum Verify {
    Nothing,
    /// The chain, against these roots; not the host name.
    Chain(Vec<u8>),
    /// Chain and host name, against these roots (`None`: the system store).
    Full(Option<Vec<u8>>),
}

/// libpq's rules: `disable`/`prefer` verify nothing; `require` verifies the
/// chain when a CA is given (and nothing otherwise); `verify-ca` and
/// `verify-full` need a CA; `sslrootcert=system` needs `verify-full`.
fn verification(info: &ConnInfo) -> Result<Verify, ConnectError> {
    let mode = info.effective_ssl_mode();
    let roots = match &info.root_cert {
        Some(RootCert::Pem(pem)) => Some(Some(pem.clone())),
        Some(RootCert::File(path)) => Some(Some(
            read_root_cert(path)
                .map_err(|source| ConnectError::ReadRootCert { path: path.clone(), source })?,
        )),
        Some(RootCert::System) => Some(None),
        None => None,
    };
    Ok(match (mode, roots) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => Verify::Nothing,
        (SslMode::VerifyFull, Some(roots)) => Verify::Full(roots),
        (mode, Some(None)) => return Err(ConnectError::WeakModeWithSystemRoots(mode.as_str())),
        (SslMode::Require | SslMode::VerifyCa, Some(Some(pem))) => Verify::Chain(pem),
        (mode @ (SslMode::VerifyCa | SslMode::VerifyFull), None) => {
            return Err(ConnectError::RootCertRequired(mode.as_str()))
        }
    })
}

/// A CA bundle is a few kilobytes; a path like `/dev/zero` must not read
/// forever. (Only `render --database-url` reads files: Secrets may not name
/// them.)
const MAX_ROOT_CERT_BYTES: u64 = 1 << 20;

fn read_root_cert(path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut pem = Vec::new();
    std::fs::File::open(path)?.take(MAX_ROOT_CERT_BYTES + 1).read_to_end(&mut pem)?;
    if pem.len() as u64 > MAX_ROOT_CERT_BYTES {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(pem)
}

/// TLS as libpq's sslmode defines it for `info`.
pub fn tls_connector(info: &ConnInfo) -> Result<MakeTlsConnector, ConnectError> {
    let mut builder = TlsConnector::builder();
    let roots = match verification(info)? {
        Verify::Nothing => {
            builder.danger_accept_invalid_certs(true);
            None
        }
        Verify::Chain(pem) => {
            builder.danger_accept_invalid_hostnames(true);
            Some(pem)
        }
        Verify::Full(roots) => roots,
    };
    if let Some(pem) = roots {
        // A bundle may hold several certificates; trust each and only them.
        builder.disable_built_in_roots(true);
        for cert in pem_certificates(&pem) {
            builder.add_root_certificate(
                Certificate::from_pem(&cert).map_err(ConnectError::RootCert)?,
            );
        }
    }
    Ok(MakeTlsConnector::new(builder.build().map_err(ConnectError::Tls)?))
}

fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    const END: &str = "-----END CERTIFICATE-----";
    text.split_inclusive(END)
        .filter_map(|chunk| {
            chunk.find("-----BEGIN CERTIFICATE-----").map(|i| chunk.as_bytes()[i..].to_vec())
        })
        .collect()
}

/// The tokio-postgres configuration with the wire-level sslmode for `info`.
pub fn wire_config(info: &ConnInfo) -> tokio_postgres::Config {
    let mut config = info.config.clone();
    config.ssl_mode(match info.effective_ssl_mode() {
        SslMode::Disable => WireSslMode::Disable,
        SslMode::Prefer => WireSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireSslMode::Require,
    });
    config
}

/// Maps a tokio-postgres connect failure to its stable kind. A server's
/// refusal is described by its SQLSTATE alone (see
/// [`super::sqlstate::connect_error_line`]).
pub fn connect_error(e: &tokio_postgres::Error) -> ConnectError {
    let code = e.code().map(|c| c.code()).unwrap_or_default();
    let line = match e.as_db_error() {
        Some(db) => super::sqlstate::connect_error_line(db.code().code()),
        None => super::describe(e),
    };
    if code.starts_with("28") {
        ConnectError::Authentication(line)
    } else if code == "53300" {
        // too_many_connections: back-pressure, not a credentials problem.
        ConnectError::TooManyConnections(line)
    } else {
        ConnectError::Connect(line)
    }
}

/// Drives a connection on the current tokio runtime, message by message:
/// left to itself, tokio-postgres logs every NOTICE (a user function's
/// `RAISE NOTICE 'value %', ...`) at info, text and all; here a notice is
/// logged at debug, by code only.
pub fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>) -> tokio::task::JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notice(notice)) => {
                    tracing::debug!(code = notice.code().code(), "notice from the database");
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(reason = %error, "database connection closed");
                    break;
                }
            }
        }
    })
}

/// How long a connection's handshake may take when the connection settings
/// name no `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection made by `config`, unpolled.
pub type Handshaken = (
    Client,
    tokio_postgres::Connection<
        tokio_postgres::Socket,
        postgres_native_tls::TlsStream<tokio_postgres::Socket>,
    >,
);

/// Connects within a client-side deadline. tokio-postgres bounds only the
/// TCP connect by `connect_timeout`; TLS, startup and authentication after
/// it would wait forever on a server that accepted and then stalled.
pub async fn handshake(
    config: &tokio_postgres::Config,
    tls: MakeTlsConnector,
) -> Result<Handshaken, ConnectError> {
    let limit = config.get_connect_timeout().copied().unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    super::deadline::after_server(limit, config.connect(tls)).await?.map_err(|e| connect_error(&e))
}

/// Connects and drives the connection on the current tokio runtime.
pub async fn connect(info: &ConnInfo) -> Result<Client, ConnectError> {
    let (client, connection) = handshake(&wire_config(info), tls_connector(info)?).await?;
    drive(connection);
    Ok(client)
}

/// Like [`connect`], holding `slot` (a place in the server's connection
/// budget) until the connection has closed, not merely until the client is
/// dropped: the budget counts connections the server still sees.
pub async fn connect_in_slot(
    info: &ConnInfo,
    slot: super::budget::Slot,
) -> Result<Client, ConnectError> {
    let (client, connection) = handshake(&wire_config(info), tls_connector(info)?).await?;
    let driver = drive(connection);
    tokio::spawn(async move {
        let _ = driver.await;
        drop(slot);
    });
    Ok(client)
}

/// How pooled connections are made: as [`connect`] makes them, driven by
/// [`drive`] (the pool's manager puts the handshake's deadline around it).
pub struct PoolConnect {
    pub tls: MakeTlsConnector,
}

impl deadpool_postgres::Connect for PoolConnect {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> futures_util::future::BoxFuture<
        '_,
        Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let (tls, config) = (self.tls.clone(), config.clone());
        Box::pin(async move {
            let (client, connection) = config.connect(tls).await?;
            Ok((client, drive(connection)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(s: &str) -> ConnInfo {
        s.parse().unwrap()
    }

    fn with_ca(s: &str) -> ConnInfo {
        let mut info = info(s);
        info.root_cert = Some(RootCert::Pem(b"PEM".to_vec()));
        info
    }

    fn rule(info: &ConnInfo) -> Result<&'static str, String> {
        verification(info)
            .map(|v| match v {
                Verify::Nothing => "nothing",
                Verify::Chain(_) => "chain",
                Verify::Full(Some(_)) => "full",
                Verify::Full(None) => "full, system store",
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn verification_follows_libpq() {
        let base = "postgresql://u@h/d?sslmode=";
        assert_eq!(rule(&info(&format!("{base}prefer"))), Ok("nothing"));
        assert_eq!(rule(&with_ca(&format!("{base}prefer"))), Ok("nothing"));
        assert_eq!(rule(&info(&format!("{base}require"))), Ok("nothing"));
        assert_eq!(
            rule(&with_ca(&format!("{base}require"))),
            Ok("chain"),
            "require with a CA verifies it"
        );
        assert_eq!(rule(&with_ca(&format!("{base}verify-ca"))), Ok("chain"));
        assert_eq!(rule(&with_ca(&format!("{base}verify-full"))), Ok("full"));
        for mode in ["verify-ca", "verify-full"] {
            let err = rule(&info(&format!("{base}{mode}"))).unwrap_err();
            assert!(err.contains("caCertKey") && err.contains(mode), "{err}");
        }
        assert_eq!(
            rule(&info("postgresql://u@h/d?sslrootcert=system")),
            Ok("full, system store"),
            "system roots verify fully by default"
        );
        assert_eq!(
            rule(&info("postgresql://u@h/d?sslrootcert=system&sslmode=verify-full")),
            Ok("full, system store")
        );
        for weak in ["require", "verify-ca"] {
            let err = rule(&info(&format!("postgresql://u@h/d?sslrootcert=system&sslmode={weak}")))
                .unwrap_err();
            assert!(err.contains("needs sslmode=verify-full"), "{err}");
        }
    }
}
