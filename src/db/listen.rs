//! A dedicated LISTEN connection for `changeDetection.mode: notify`.
//!
//! One per DBQR: it uses that DBQR's own Secret and fails on its own, so one
//! DBQR's credentials or outage never affects another's notifications. The
//! cost is one idle connection per notify-mode DBQR.

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::connect::{connect_error, tls_connector, wire_config, ConnectError};
use super::conninfo::ConnInfo;
use crate::sql::quote_ident;

/// Keeps the LISTEN connection open; dropping it closes the connection.
pub struct Listener {
    _client: tokio_postgres::Client,
    /// One message per notification; closes when the connection ends.
    pub notifications: mpsc::Receiver<()>,
}

/// Connects and LISTENs on `channel`.
pub async fn listen(info: &ConnInfo, channel: &str) -> Result<Listener, ConnectError> {
    let config = wire_config(info);
    let (client, mut connection) = config
        .connect(tls_connector(info)?)
        .await
        .map_err(|e| connect_error(&e))?;
    // Notifications only matter as "something changed": a small buffer and
    // dropping extras on a full channel is the debounce's first stage.
    let (tx, notifications) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    let _ = tx.try_send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {}", quote_ident(channel)))
        .await
        .map_err(|e| connect_error(&e))?;
    Ok(Listener {
        _client: client,
        notifications,
    })
}
