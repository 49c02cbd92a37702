//! The object storage a server's dumps go to: the client (the
//! `object_store` crate's S3, every request under a client-side deadline),
//! where a dump's key is, and what a key may name.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use object_store::{aws::AmazonS3Builder, path::Path, ClientOptions, ObjectStore, RetryConfig};

use crate::api::backup::BackupStorage;

/// How long one request to the storage may take (a part of a dump, a HEAD).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the storage cannot be used. Messages name keys of Secrets and
/// fields, never a value read from a Secret.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the backup storage Secret lacks key {0:?}")]
    MissingKey(String),
    #[error("the backup storage is not usable: {0}")]
    Config(String),
    #[error("the backup storage answered: {0}")]
    Request(String),
    #[error("{0:?} is not a dump of this namespace's databases")]
    Foreign(String),
}

impl StorageError {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingKey(_) | Self::Config(_) => crate::reason::BACKUP_STORAGE_INVALID,
            Self::Request(_) => crate::reason::BACKUP_STORAGE_FAILED,
            Self::Foreign(_) => crate::reason::NOT_ALLOWED,
        }
    }
}

/// The storage of one server, with the Secret's credentials.
#[derive(Clone)]
pub struct Storage {
    pub store: Arc<dyn ObjectStore>,
    pub bucket: String,
    prefix: String,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage").field("bucket", &self.bucket).finish_non_exhaustive()
    }
}

/// The Secret keys of the credentials.
pub fn credential_keys(spec: &BackupStorage) -> (String, String) {
    let reference = &spec.credentials_secret_ref;
    (
        reference.access_key_id_key.clone().unwrap_or_else(|| "accessKeyId".into()),
        reference.secret_access_key_key.clone().unwrap_or_else(|| "secretAccessKey".into()),
    )
}

impl Storage {
    /// A client for `spec` with the credentials in `secret` (its data).
    pub fn open(
        spec: &BackupStorage,
        secret: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, StorageError> {
        let (id_key, secret_key) = credential_keys(spec);
        let value = |key: &str| {
            secret
                .get(key)
                .and_then(|v| String::from_utf8(v.clone()).ok())
                .map(|v| v.trim().to_owned())
                .ok_or_else(|| StorageError::MissingKey(key.to_owned()))
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&spec.bucket)
            .with_region(&spec.region)
            .with_access_key_id(value(&id_key)?)
            .with_secret_access_key(value(&secret_key)?)
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(120),
                ..Default::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_allow_http(
                        spec.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")),
                    ),
            );
        if let Some(endpoint) = &spec.endpoint {
            // Path-style requests: what MinIO and most S3-compatible servers serve.
            builder = builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
        }
        // Fixed words: the builder's text quotes the settings back.
        let store = builder.build().map_err(|_| {
            StorageError::Config("the endpoint, region or bucket is not valid".to_owned())
        })?;
        Ok(Self {
            store: Arc::new(store),
            bucket: spec.bucket.clone(),
            prefix: spec.prefix.clone().unwrap_or_default(),
        })
    }

    /// Where the dumps of `namespace`'s databases go: `<prefix><namespace>/`.
    pub fn namespace_prefix(&self, namespace: &str) -> String {
        format!("{}{namespace}/", self.prefix)
    }

    /// The key of a new dump.
    pub fn key(&self, namespace: &str, database: &str, backup: &str, at: i64) -> String {
        format!("{}{database}/{backup}-{at}.dump", self.namespace_prefix(namespace))
    }

    /// `s3://bucket/key`.
    pub fn destination(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// The key in `destination`, if it is one of `namespace`'s dumps in
    /// this bucket: a backup's status cannot point a restore or a deletion
    /// at another team's dumps.
    pub fn own_key(&self, destination: &str, namespace: &str) -> Result<String, StorageError> {
        let foreign = || StorageError::Foreign(destination.to_owned());
        let rest = destination.strip_prefix("s3://").ok_or_else(foreign)?;
        let (bucket, key) = rest.split_once('/').ok_or_else(foreign)?;
        let inside = bucket == self.bucket
            && key.starts_with(&self.namespace_prefix(namespace))
            && !key.split('/').any(|part| part == ".." || part == "." || part.is_empty());
        inside.then(|| key.to_owned()).ok_or_else(foreign)
    }

    /// The size of a stored dump; `None` if there is none.
    pub async fn size(&self, key: &str) -> Result<Option<u64>, StorageError> {
        match self.store.head(&Path::from(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::Request(describe(&e))),
        }
    }

    /// Deletes a dump (one already gone counts as deleted).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::Request(describe(&e))),
        }
    }
}

/// An object_store error in our words, by its kind. Its own text quotes the
/// request's URL and the endpoint's answer, and an S3 answer can echo the
/// access key id (`InvalidAccessKeyId`): none of it reaches a message, which
/// a team reads on its DatabaseBackup.
pub fn describe(e: &object_store::Error) -> String {
    use object_store::Error as E;
    let kind = match e {
        E::NotFound { .. } => "no such object or bucket",
        E::PermissionDenied { .. } => "access denied (the credentials or the bucket's policy)",
        E::Unauthenticated { .. } => "the credentials were refused",
        E::AlreadyExists { .. } | E::Precondition { .. } | E::NotModified { .. } => {
            "the object changed during the request"
        }
        E::InvalidPath { .. } => "not a valid object key",
        E::NotSupported { .. } | E::NotImplemented | E::UnknownConfigurationKey { .. } => {
            "an operation the storage does not support"
        }
        E::Generic { source, .. } => return generic(&source.to_string()),
        _ => "the request failed",
    };
    kind.to_owned()
}

/// A failure without a kind of its own (the connection, a timeout, another
/// status), judged by its text; only the status number is kept of it.
fn generic(text: &str) -> String {
    // What went wrong follows the method, URL and retry settings (which
    // name a `retry_timeout` whatever the failure).
    let text = text.split_once(" - ").map_or(text, |(_, inner)| inner).to_ascii_lowercase();
    let status = text
        .split("status code: ")
        .nth(1)
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok());
    let kind = if text.contains("nosuchbucket") {
        "the bucket does not exist"
    } else if text.contains("timed out") || text.contains("timeout") {
        "the storage did not answer in time"
    } else if status.is_none() && (text.contains("connect") || text.contains("sending request")) {
        "cannot reach the storage"
    } else {
        "the storage answered with an error"
    };
    match status {
        Some(code) => format!("{kind} (HTTP {code})"),
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage() -> Storage {
        let spec: BackupStorage = serde_json::from_value(serde_json::json!({
            "endpoint": "http://127.0.0.1:9", "bucket": "dumps", "prefix": "teams/",
            "credentialsSecretRef": {"name": "s3"},
        }))
        .unwrap();
        let secret = BTreeMap::from([
            ("accessKeyId".to_owned(), b"id".to_vec()),
            ("secretAccessKey".to_owned(), b"key".to_vec()),
        ]);
        Storage::open(&spec, &secret).unwrap()
    }

    #[test]
    fn keys_stay_under_the_namespace() {
        let s = storage();
        let key = s.key("team-a", "orders", "nightly", 1700000000);
        assert_eq!(key, "teams/team-a/orders/nightly-1700000000.dump");
        let destination = s.destination(&key);
        assert_eq!(s.own_key(&destination, "team-a").unwrap(), key);
        for (forged, ns) in [
            (destination.as_str(), "team-b"),
            ("s3://other/teams/team-a/orders/x.dump", "team-a"),
            ("s3://dumps/teams/team-a/../team-b/orders/x.dump", "team-a"),
            ("s3://dumps/teams/team-ab/orders/x.dump", "team-a"),
            ("dumps/teams/team-a/x.dump", "team-a"),
        ] {
            let e = s.own_key(forged, ns).unwrap_err();
            assert_eq!(e.reason(), "NotAllowed", "{forged}");
        }
    }

    #[test]
    fn storage_errors_quote_nothing_of_the_request_or_the_answer() {
        let answer = "<Error><Code>InvalidAccessKeyId</Code><AWSAccessKeyId>AKIASECRET</AWSAccessKeyId></Error>";
        let boxed = |text: &str| -> Box<dyn std::error::Error + Send + Sync> { text.into() };
        let path = "teams/team-a/orders/x.dump".to_owned();
        let cases = [
            (
                object_store::Error::PermissionDenied { path: path.clone(), source: boxed(answer) },
                "access denied (the credentials or the bucket's policy)",
            ),
            (
                object_store::Error::NotFound { path: path.clone(), source: boxed(answer) },
                "no such object or bucket",
            ),
            (
                object_store::Error::Generic {
                    store: "S3",
                    source: boxed(&format!(
                        "Error performing PUT http://10.0.0.9:9000/dumps/{path} in 1s - \
                         Server returned non-2xx status code: 503 Service Unavailable: {answer}"
                    )),
                },
                "the storage answered with an error (HTTP 503)",
            ),
            (
                object_store::Error::Generic {
                    store: "S3",
                    source: boxed(
                        "Error performing GET http://10.0.0.9:9000/dumps in 30s, after 3 retries, \
                         max_retries: 3, retry_timeout: 120s  - error sending request: client error (Connect)",
                    ),
                },
                "cannot reach the storage",
            ),
        ];
        for (error, expected) in cases {
            let text = describe(&error);
            assert_eq!(text, expected);
            for secret in ["AKIASECRET", "10.0.0.9", "team-a"] {
                assert!(!text.contains(secret), "{text}");
            }
        }
    }

    #[test]
    fn missing_credentials_name_the_key() {
        let spec: BackupStorage = serde_json::from_value(serde_json::json!({
            "bucket": "dumps", "credentialsSecretRef": {"name": "s3", "accessKeyIdKey": "id"},
        }))
        .unwrap();
        let e = Storage::open(&spec, &BTreeMap::new()).unwrap_err();
        assert_eq!(e.to_string(), "the backup storage Secret lacks key \"id\"");
    }
}
