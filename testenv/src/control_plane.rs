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
pub struct ControlPlane {
    pub info: ControlPlaneInfo,
    // Held only to be stopped on drop, in field order: controller-manager first.
    _controller_manager: Supervised,
    _apiserver: Supervised,
    _etcd: Supervised,
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
        let mut etcd = Supervised::start(
            "etcd",
            &[],
            &assets.join("etcd"),
            &[
                format!("--data-dir={}", path("etcd")),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
            ],
            dir.join("etcd.log"),
        )?;
        etcd.wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", etcd_port)).is_ok()
        })?;

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
        let mut apiserver = Supervised::start(
            "kube-apiserver",
            &[],
            &assets.join("kube-apiserver"),
            &[
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
        Ok(Self {
            info,
            _controller_manager: controller_manager,
            _apiserver: apiserver,
            _etcd: etcd,
        })
    }
}
