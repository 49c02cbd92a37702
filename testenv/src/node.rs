//! A one-node cluster that runs Pods: `hack/node.sh` (control plane,
//! containerd and a kubelet in private namespaces), started and stopped from
//! Rust. Needs root; [`Node::unavailable`] says why it cannot run.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{process::Supervised, Error};

/// What `hack/node.sh` reports once the node is Ready.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Admin kubeconfig reaching the API server from the host.
    pub kubeconfig: PathBuf,
    /// The host's address as pods see it (a server for pods listens here).
    pub host_ip: std::net::Ipv4Addr,
    pub node_name: String,
    /// The API server's audit log: every write, with user and source address.
    pub audit_log: PathBuf,
    /// Logs of every node component.
    pub logs: PathBuf,
}

/// A running node; torn down (kernel settings restored) when dropped.
pub struct Node {
    pub info: NodeInfo,
    process: Supervised,
}

impl Node {
    /// Why a node cannot run here, if it cannot: it needs root for
    /// namespaces, cgroups and iptables.
    pub fn unavailable() -> Option<String> {
        let uid = std::process::Command::new("id")
            .arg("-u")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        (uid.as_deref() != Some("0")).then(|| "a node needs root (namespaces, cgroups)".into())
    }

    /// Starts a node under `dir` with `images` (docker-archive or OCI tar
    /// files) imported into its container runtime.
    pub fn start(dir: &Path, images: &[PathBuf]) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let script = crate::repo_root().join("hack/node.sh");
        let mut args =
            vec![script.to_string_lossy().into_owned(), dir.to_string_lossy().into_owned()];
        args.extend(images.iter().map(|i| i.to_string_lossy().into_owned()));
        let mut process =
            Supervised::start("node", &[], Path::new("bash"), &args, dir.join("node-outer.log"))?;
        let env_file = dir.join("node.env");
        process.wait_until(Duration::from_secs(300), || env_file.exists())?;
        let text = std::fs::read_to_string(&env_file)
            .map_err(|e| Error::io(format!("read {}", env_file.display()), e))?;
        let env: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |key: &str| {
            env.get(key)
                .map(|v| v.to_string())
                .ok_or_else(|| Error::msg(format!("{} lacks {key}", env_file.display())))
        };
        let info = NodeInfo {
            kubeconfig: get("KUBECONFIG")?.into(),
            host_ip: get("HOST_IP")?
                .parse()
                .map_err(|_| Error::msg("HOST_IP is not an IPv4 address"))?,
            node_name: get("NODE_NAME")?,
            audit_log: get("AUDIT_LOG")?.into(),
            logs: get("LOGS")?.into(),
        };
        Ok(Self { info, process })
    }

    /// Fails with the node's log if it has died.
    pub fn ensure_running(&mut self) -> Result<(), Error> {
        self.process.ensure_running()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The script tears down on SIGTERM: kill the namespaces, restore the
        // kernel settings, remove the kubelet's cgroups.
        self.process.stop(Duration::from_secs(30));
    }
}
