//! An S3-compatible object storage for the backup tests: moto's server
//! (`hack/s3-venv.sh` installs it from PyPI) on an address pods can reach,
//! buckets in memory. Its buckets are made and read with boto3 through the
//! same Python, so the tests' view of the bucket does not depend on the
//! operator's S3 client.

use std::{
    net::{Ipv4Addr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    process::{free_port, Supervised},
    Error,
};

/// The credentials the server accepts (any are).
pub const ACCESS_KEY: &str = "dbqo-test-access";
pub const SECRET_KEY: &str = "dbqo-test-secret";

pub struct S3Server {
    /// `http://<ip>:<port>`.
    pub endpoint: String,
    python: PathBuf,
    _process: Supervised,
}

fn python() -> Result<PathBuf, Error> {
    let script = crate::repo_root().join("hack/s3-venv.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| Error::io("run hack/s3-venv.sh", e))?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "hack/s3-venv.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

impl S3Server {
    /// Starts a server listening on `ip` (an address pods reach, or loopback).
    pub fn start(dir: &Path, ip: Ipv4Addr) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let python = python()?;
        let port = free_port()?;
        let mut process = Supervised::start(
            "moto_server",
            &[],
            &python,
            &[
                "-m".into(),
                "moto.server".into(),
                "-H".into(),
                ip.to_string(),
                "-p".into(),
                port.to_string(),
            ],
            dir.join("moto.log"),
        )?;
        let addr = format!("{ip}:{port}");
        process.wait_until(Duration::from_secs(60), || TcpStream::connect(&addr).is_ok())?;
        Ok(Self { endpoint: format!("http://{addr}"), python, _process: process })
    }

    fn boto(&self, code: &str) -> Result<String, Error> {
        let program = format!(
            "import boto3, sys\n\
             s3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='{ACCESS_KEY}', \
             aws_secret_access_key='{SECRET_KEY}', region_name='us-east-1')\n{code}",
            self.endpoint
        );
        let out = Command::new(&self.python)
            .args(["-c", &program])
            .output()
            .map_err(|e| Error::io("run boto3", e))?;
        if !out.status.success() {
            return Err(Error::msg(format!("boto3: {}", String::from_utf8_lossy(&out.stderr))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn create_bucket(&self, bucket: &str) -> Result<(), Error> {
        self.boto(&format!("s3.create_bucket(Bucket='{bucket}')")).map(|_| ())
    }

    /// Every object under `prefix`: (key, size), sorted by key.
    pub fn objects(&self, bucket: &str, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        let out = self.boto(&format!(
            "pages = s3.get_paginator('list_objects_v2').paginate(Bucket='{bucket}', Prefix='{prefix}')\n\
             for page in pages:\n    for o in page.get('Contents', []):\n        print(o['Key'], o['Size'])"
        ))?;
        let mut objects: Vec<(String, u64)> = out
            .lines()
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, s)| (k.to_owned(), s.parse().unwrap_or(0)))
            .collect();
        objects.sort();
        Ok(objects)
    }

    /// Writes `bytes` under `key` (a dump that is not one, for the tests).
    pub fn put(&self, bucket: &str, key: &str, bytes: &str) -> Result<(), Error> {
        self.boto(&format!("s3.put_object(Bucket='{bucket}', Key='{key}', Body=b'{bytes}')"))
            .map(|_| ())
    }
}
