//! Child processes that cannot outlive the test run.
//!
//! Every child is started through `setpriv --pdeathsig KILL`, so the kernel
//! kills it when the thread that spawned it ends. All spawning happens on one
//! thread that lives as long as the process, so a panicking test, a killed
//! test binary or a killed `testenv run` all take their servers with them.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{mpsc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use crate::Error;

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let _ = reply.send(command.spawn());
                }
                // The channel never closes while the process lives; parking
                // keeps the thread (and so its children) alive regardless.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the testenv spawner thread");
        Mutex::new(tx)
    })
}

/// A supervised child process; killed when dropped.
pub struct Supervised {
    pub name: &'static str,
    child: Child,
    pub log: PathBuf,
    stop_signal: &'static str,
}

impl Supervised {
    /// Starts `program args...` with `prefix` (e.g. a user switch) in front,
    /// stdout and stderr going to `log`.
    pub fn start(
        name: &'static str,
        prefix: &[String],
        program: &Path,
        args: &[String],
        log: PathBuf,
    ) -> Result<Self, Error> {
        Self::start_with_env(name, prefix, program, args, &[], log)
    }

    /// Like [`Supervised::start`], with extra environment variables.
    pub fn start_with_env(
        name: &'static str,
        prefix: &[String],
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
        log: PathBuf,
    ) -> Result<Self, Error> {
        let out =
            File::create(&log).map_err(|e| Error::io(format!("create {}", log.display()), e))?;
        let err = out.try_clone().map_err(|e| Error::io("clone log handle", e))?;
        let mut command = Command::new("setpriv");
        command
            .args(prefix)
            .args(["--pdeathsig", "KILL", "--"])
            .arg(program)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let (reply_tx, reply_rx) = mpsc::channel();
        spawner()
            .lock()
            .map_err(|_| Error::msg("spawner lock poisoned"))?
            .send((command, reply_tx))
            .map_err(|_| Error::msg("spawner thread is gone"))?;
        let child = reply_rx
            .recv()
            .map_err(|_| Error::msg("spawner thread is gone"))?
            .map_err(|e| Error::io(format!("start {name} ({})", program.display()), e))?;
        Ok(Self { name, child, log, stop_signal: "TERM" })
    }

    /// Fails with the log's tail if the process has exited.
    pub fn ensure_running(&mut self) -> Result<(), Error> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(Error::msg(format!(
                "{} exited ({status}); last log lines:\n{}",
                self.name,
                tail(&self.log, 20)
            ))),
            Err(e) => Err(Error::io(format!("wait for {}", self.name), e)),
        }
    }

    /// Polls `ready` until it holds, the process dies, or `timeout` passes.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            self.ensure_running()?;
            if ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::msg(format!(
                    "{} not ready after {timeout:?}; last log lines:\n{}",
                    self.name,
                    tail(&self.log, 20)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id (`setpriv` execs the program, so it is the program's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None`
    /// if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => return None,
            }
        }
    }

    /// Signal [`Supervised::stop`] sends first (PostgreSQL wants INT: fast shutdown).
    pub fn with_stop_signal(mut self, signal: &'static str) -> Self {
        self.stop_signal = signal;
        self
    }

    /// Waits for the process to exit by itself; fails with its log if it
    /// fails or takes longer than `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(Error::msg(format!(
                        "{} failed ({status}); last log lines:\n{}",
                        self.name,
                        tail(&self.log, 20)
                    )))
                }
                Ok(None) if Instant::now() > deadline => {
                    return Err(Error::msg(format!(
                        "{} still running after {timeout:?}",
                        self.name
                    )))
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(Error::io(format!("wait for {}", self.name), e)),
            }
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args([&format!("-{}", self.stop_signal), &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free TCP port on loopback (released before returning; the window for a
/// clash is small and a clash shows as a clear start-up failure).
pub fn free_port() -> Result<u16, Error> {
    Ok(free_ports::<1>()?[0])
}

/// `N` distinct free ports. The probing sockets stay open until all are
/// chosen: closed one by one, the kernel may hand out the same port twice
/// (seen as etcd failing to bind its peer port to its client port).
pub fn free_ports<const N: usize>() -> Result<[u16; N], Error> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::io("bind a free port", e))?;
        *port = listener.local_addr().map_err(|e| Error::io("read the free port", e))?.port();
        listeners.push(listener);
    }
    Ok(ports)
}

/// Runs a short helper command to completion, failing with its output.
pub fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("run {program}"), e))?;
    if !output.status.success() {
        return Err(Error::msg(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
