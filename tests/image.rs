//! The runtime image (SPEC §7, issue 10): built from the Dockerfile without a
//! daemon by `hack/image.sh` (buildah on a debootstrapped Debian base), it
//! runs the operator binary as a non-root user.

use std::process::Command;

fn image(args: &[&str]) -> (bool, String, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../hack/image.sh");
    let out = Command::new("bash").arg(script).args(args).output().expect("run hack/image.sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_image_runs_the_operator_as_a_non_root_user() {
    let (ok, name, log) = image(&[]);
    assert!(ok, "{log}");
    assert!(name.trim().ends_with(env!("CARGO_PKG_VERSION")), "{name}");

    let (ok, config, log) = image(&["inspect"]);
    assert!(ok, "{log}");
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let oci = &config["OCIv1"]["config"];
    assert_eq!(oci["User"], "65532:65532");
    assert_eq!(oci["Entrypoint"], serde_json::json!(["/usr/local/bin/db-query-operator"]));

    // The binary runs in it (its libraries are there) and as that user.
    let (ok, crd, log) = image(&["run", "/usr/local/bin/db-query-operator", "crd"]);
    assert!(ok, "{log}");
    assert_eq!(crd, dbqo::cli::all_crds_yaml());
    let (ok, uid, log) = image(&["run", "id", "-u"]);
    assert!(ok, "{log}");
    assert_eq!(uid.trim(), "65532");
}
