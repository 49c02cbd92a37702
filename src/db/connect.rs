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
    #[error("authentication failed: {0}")]
    Authentication(String),
    #[error("the database server has no connection to spare: {0}")]
    TooManyConnections(String),
    #[error("cannot connect: {0}")]
    Connect(String),
}

impl ConnectError {
    /// Stable reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ReadRootCert { .. } | Self::RootCert(_) | Self::Tls(_) => "TlsConfigError",
            Self::Authentication(_) => "AuthenticationFailed",
            Self::TooManyConnections(_) => "TooManyConnections",
            Self::Connect(_) => "ConnectionFailed",
        }
    }
}

/// TLS as libpq's sslmode defines it for `info`.
pub fn tls_connector(info: &ConnInfo) -> Result<MakeTlsConnector, ConnectError> {
    let mut builder = TlsConnector::builder();
    match info.ssl_mode {
        // libpq does not verify in these modes; neither do we.
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            builder.danger_accept_invalid_certs(true);
        }
        SslMode::VerifyCa => {
            builder.danger_accept_invalid_hostnames(true);
        }
        SslMode::VerifyFull => {}
    }
    if matches!(info.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) {
        let pem = match &info.root_cert {
            Some(RootCert::Pem(pem)) => Some(pem.clone()),
            Some(RootCert::File(path)) => {
                Some(
                    std::fs::read(path).map_err(|source| ConnectError::ReadRootCert {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        if let Some(pem) = pem {
            // A bundle may hold several certificates; trust each and only them.
            builder.disable_built_in_roots(true);
            for cert in pem_certificates(&pem) {
                builder.add_root_certificate(
                    Certificate::from_pem(&cert).map_err(ConnectError::RootCert)?,
                );
            }
        }
    }
    Ok(MakeTlsConnector::new(
        builder.build().map_err(ConnectError::Tls)?,
    ))
}

fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    const END: &str = "-----END CERTIFICATE-----";
    text.split_inclusive(END)
        .filter_map(|chunk| {
            chunk
                .find("-----BEGIN CERTIFICATE-----")
                .map(|i| chunk.as_bytes()[i..].to_vec())
        })
        .collect()
}

/// The tokio-postgres configuration with the wire-level sslmode for `info`.
pub fn wire_config(info: &ConnInfo) -> tokio_postgres::Config {
    let mut config = info.config.clone();
    config.ssl_mode(match info.ssl_mode {
        SslMode::Disable => WireSslMode::Disable,
        SslMode::Prefer => WireSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireSslMode::Require,
    });
    config
}

/// Maps a tokio-postgres connect failure to its stable kind.
pub fn connect_error(e: &tokio_postgres::Error) -> ConnectError {
    let code = e.code().map(|c| c.code()).unwrap_or_default();
    if code.starts_with("28") {
        ConnectError::Authentication(super::describe(e))
    } else if code == "53300" {
        // too_many_connections: back-pressure, not a credentials problem.
        ConnectError::TooManyConnections(super::describe(e))
    } else {
        ConnectError::Connect(super::describe(e))
    }
}

/// Connects and drives the connection on the current tokio runtime.
pub async fn connect(info: &ConnInfo) -> Result<Client, ConnectError> {
    let config = wire_config(info);
    let tls = tls_connector(info)?;
    let (client, connection) = config.connect(tls).await.map_err(|e| connect_error(&e))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "database connection closed");
        }
    });
    Ok(client)
}
