//! A real node (kubelet + containerd) with one of the operator's images
//! on it, for the tests that run the operator's own pods.

use std::path::{Path, PathBuf};
use std::time::Instant;

use dbqo_testenv::Node;

/// The operator's images, as `hack/image.sh` builds them.
#[derive(Clone, Copy)]
pub enum Image {
    Operator,
    /// The same binary with the engines' client tools (backup Jobs).
    Backup,
}

/// A node that holds `image`, the image's name and the test's directory.
pub struct Imaged {
    pub node: Node,
    pub image: String,
    pub dir: PathBuf,
}

/// Starts a node under the run's directory (`<run>.<name>`) and imports
/// `image` into its containerd. Panics when this machine cannot run a node:
/// a run that cannot start one has not tested what it names.
pub async fn start(name: &str, image: Image, started: Instant) -> Imaged {
    if let Some(why) = Node::unavailable() {
        panic!("the {name} test cannot run here: {why}");
    }
    let dir = dbqo_testenv::run_dir().with_extension(name);
    std::fs::create_dir_all(&dir).unwrap();
    let archive = dir.join("image.tar");
    let built = archive_of(image, &archive);
    step(started, "image built");
    let node = {
        let (dir, archive) = (dir.clone(), archive.clone());
        tokio::task::spawn_blocking(move || Node::start(&dir.join("node"), &[archive]))
            .await
            .unwrap()
            .expect("a node")
    };
    // Imported into the node's containerd; a quarter of a gigabyte or more.
    std::fs::remove_file(&archive).unwrap();
    step(started, "node Ready");
    Imaged { node, image: built, dir }
}

/// Writes `image` to `path` as a docker-archive (what `ctr images import`
/// loads) and returns its name.
fn archive_of(image: Image, path: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/image.sh");
    let mut command = std::process::Command::new("bash");
    command.arg(script);
    if let Image::Backup = image {
        command.arg("backup");
    }
    let out = command
        .arg("archive")
        .arg(path)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run hack/image.sh");
    assert!(out.status.success(), "hack/image.sh archive failed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Progress on stderr: a failure's output then says how far the run got
/// and how long each step took (CI keeps only the end of a failure's output).
pub fn step(started: Instant, what: &str) {
    eprintln!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
}
