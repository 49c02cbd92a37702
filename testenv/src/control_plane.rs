//! etcd + kube-apiserver + kube-controller-manager on loopback, envtest-style.
//! Clients authenticate with a static bearer token in `system:masters`.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    process::{free_port, free_ports, run, Supervised},
    Error,
};

const ADMIN_TOKEN: &str = "dbqo-testenv-admin-token";

/// How to reach a running control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlPlaneInfo {
    /// `https://127.0.0.1:<port>`
    pub server: String,
    /// Kubeconfig with the admin token and the server's CA.
    pub kubeconfig: PathBuf,
    /// PEM bundle that verifies the API server.
    pub ca_cert: PathBuf,
    pub token: String,
}

/// A running control plane; stopped when dropped (controller-manager first).
/// A test may stop and start its API server and etcd (fault injection).
pub struct ControlPlane {
    pub info: ControlPlaneInfo,
    // Stopped on drop in field order: controller-manager first.
    _controller_manager: Supervised,
    apiserver: Restartable,
    etcd: Restartable,
    etcd_port: u16,
}

/// A server started again with the same program, flags and data.
struct Restartable {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    starts: u32,
    process: Option<Supervised>,
}

impl Restartable {
    fn start(
        name: &'static str,
        program: PathBuf,
        args: Vec<String>,
        log: PathBuf,
    ) -> Result<Self, Error> {
        let mut server = Self { name, program, args, log, starts: 0, process: None };
        server.resume()?;
        Ok(server)
    }

    fn resume(&mut self) -> Result<&mut Supervised, Error> {
        if self.process.is_none() {
            // Each start logs to a file of its own: the first one's log stays readable.
            let log = match self.starts {
                0 => self.log.clone(),
                n => self.log.with_extension(format!("{n}.log")),
            };
            self.starts += 1;
            self.process = Some(Supervised::start(self.name, &[], &self.program, &self.args, log)?);
        }
        Ok(self.process.as_mut().expect("started above"))
    }

    fn stop(&mut self, grace: Duration) {
        if let Some(mut process) = self.process.take() {
            process.stop(grace);
        }
    }
}

fn api_ready(info: &ControlPlaneInfo) -> bool {
    std::process::Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--max-time", "2", "--cacert"])
        .arg(&info.ca_cert)
        .args(["-H", &format!("Authorization: Bearer {}", info.token)])
        .arg(format!("{}/readyz", info.server))
        .status()
        .is_ok_and(|s| s.success())
}

impl ControlPlane {
    pub fn start(dir: &Path, assets: &Path) -> Result<Self, Error> {
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs)
            .map_err(|e| Error::io(format!("create {}", certs.display()), e))?;
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();

        let [etcd_port, peer_port] = free_ports()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Restartable::start(
            "etcd",
            assets.join("etcd"),
            vec![
                format!("--data-dir={}", path("etcd")),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
            ],
            dir.join("etcd.log"),
        )?;
        etcd.resume()?.wait_until(Duration::from_secs(30), || etcd_listens(etcd_port))?;

        run("openssl", &["genrsa", "-out", &path("sa.key"), "2048"])?;
        run("openssl", &["rsa", "-in", &path("sa.key"), "-pubout", "-out", &path("sa.pub")])?;
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin,\"system:masters\"\n"),
        )
        .map_err(|e| Error::io("write tokens.csv", e))?;

        let port = free_port()?;
        let info = ControlPlaneInfo {
            server: format!("https://127.0.0.1:{port}"),
            kubeconfig: dir.join("kubeconfig"),
            // The API server writes its self-signed serving cert followed by its CA here.
            ca_cert: certs.join("apiserver.crt"),
            token: ADMIN_TOKEN.into(),
        };
        let mut apiserver = Restartable::start(
            "kube-apiserver",
            assets.join("kube-apiserver"),
            vec![
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={port}"),
                "--insecure-port=0".into(),
                format!("--cert-dir={}", certs.display()),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                format!("--token-auth-file={}", path("tokens.csv")),
                "--authorization-mode=RBAC".into(),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", path("sa.pub")),
                format!("--service-account-signing-key-file={}", path("sa.key")),
                // No token controller runs, so pods could never get their service account token.
                "--disable-admission-plugins=ServiceAccount".into(),
            ],
            dir.join("kube-apiserver.log"),
        )?;
        apiserver
            .resume()?
            .wait_until(Duration::from_secs(120), || info.ca_cert.exists() && api_ready(&info))?;

        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {}\ncontexts:\n- name: testenv\n  context:\n    cluster: testenv\n    user: admin\n    namespace: default\ncurrent-context: testenv\n",
            info.server,
            info.ca_cert.display(),
            info.token
        );
        std::fs::write(&info.kubeconfig, kubeconfig)
            .map_err(|e| Error::io("write kubeconfig", e))?;

        let mut controller_manager = Supervised::start(
            "kube-controller-manager",
            &[],
            &assets.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={}", info.kubeconfig.display()),
                "--controllers=garbagecollector,deployment,replicaset,namespace,serviceaccount,job,clusterrole-aggregation"
                    .into(),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--secure-port=0".into(),
                "--port=0".into(),
                "--use-service-account-credentials=false".into(),
            ],
            dir.join("kube-controller-manager.log"),
        )?;
        controller_manager.wait_until(Duration::from_secs(5), || true)?;
        Ok(Self { info, _controller_manager: controller_manager, apiserver, etcd, etcd_port })
    }

    /// Stops the API server (SIGTERM, then SIGKILL after `grace`).
    pub fn stop_apiserver(&mut self, grace: Duration) {
        self.apiserver.stop(grace);
    }

    /// Starts the API server again (same port, certificates and etcd) and
    /// waits until it is ready.
    pub fn start_apiserver(&mut self) -> Result<(), Error> {
        let info = self.info.clone();
        self.apiserver.resume()?.wait_until(Duration::from_secs(120), || api_ready(&info))
    }

    /// Stops etcd (SIGTERM, then SIGKILL after `grace`); the API server
    /// keeps running and answers errors meanwhile.
    pub fn stop_etcd(&mut self, grace: Duration) {
        self.etcd.stop(grace);
    }

    /// Starts etcd again (same data) and waits until the API server is ready.
    pub fn start_etcd(&mut self) -> Result<(), Error> {
        let port = self.etcd_port;
        self.etcd.resume()?.wait_until(Duration::from_secs(30), || etcd_listens(port))?;
        let info = self.info.clone();
        let apiserver = self.apiserver.resume()?;
        apiserver.wait_until(Duration::from_secs(120), || api_ready(&info))
    }
}

fn etcd_listens(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}
