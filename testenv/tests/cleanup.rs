//! The harness leaves no server behind: not when a test panics, not when the
//! process that started the servers is killed.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use dbqo_testenv::{Postgres, PostgresOptions};

const CHILD: &str = "DBQO_SELFTEST_CHILD";

fn alive(pid: u32) -> bool {
    // A zombie has no cmdline; it is dead for our purposes.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

fn processes_mentioning(text: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(text))
        })
        .collect()
}

fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The child of [`a_panicking_test_leaves_no_server_behind`], which runs it
/// with `--ignored`; ignored in a normal run, since it panics on purpose.
#[test]
#[ignore = "run by a_panicking_test_leaves_no_server_behind"]
fn child_starts_postgres_then_panics() {
    let pid_file =
        std::env::var(CHILD).expect("started by its parent test, which sets the pid file");
    let dir = Path::new(&pid_file).parent().unwrap().join("pg");
    let server = Postgres::start(&dir, PostgresOptions::default()).unwrap();
    let pid = std::fs::read_to_string(server.info.data_dir.join("postmaster.pid")).unwrap();
    std::fs::write(&pid_file, pid.lines().next().unwrap()).unwrap();
    // Leak the handle so only the kernel's parent-death signal can stop it.
    std::mem::forget(server);
    panic!("deliberate panic with a running PostgreSQL");
}

#[test]
fn a_panicking_test_leaves_no_server_behind() {
    let dir = tempfile_dir("panic");
    let pid_file = dir.join("postgres.pid");
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_starts_postgres_then_panics",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &pid_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child test was meant to panic");
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    wait_until(Duration::from_secs(15), "postgres to die with its test", || !alive(pid));
}

#[test]
fn a_killed_testenv_takes_its_servers_with_it() {
    let mut testenv = Command::new(env!("CARGO_BIN_EXE_testenv"))
        .arg("up")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(testenv.stdout.take().unwrap()).lines();
    let env_line = lines.next().unwrap().unwrap();
    let env_file =
        env_line.strip_prefix(&format!("export {}=", dbqo_testenv::ENV_VAR)).unwrap().to_owned();
    let run_dir = Path::new(&env_file).parent().unwrap().to_string_lossy().into_owned();
    // kube-controller-manager is the last to start; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let servers = loop {
        let servers = processes_mentioning(&run_dir);
        if servers.len() >= 4 || Instant::now() > deadline {
            break servers;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        servers.len() >= 4,
        "etcd, kube-apiserver, kube-controller-manager and postgres run: {servers:?}; controller manager log:\n{}",
        dbqo_testenv::process::tail(&Path::new(&run_dir).join("kube/kube-controller-manager.log"), 20)
    );

    Command::new("kill").args(["-KILL", &testenv.id().to_string()]).status().unwrap();
    let _ = testenv.wait();
    wait_until(Duration::from_secs(15), "every server to die with testenv", || {
        servers.iter().all(|&pid| !alive(pid))
    });
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = dbqo_testenv::run_dir().with_extension(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
