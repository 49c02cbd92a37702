//! Fault tools for the reliability tests. Each listens on loopback only and
//! stops when dropped (its threads end with the test process at the latest).
//!
//! [`StallProxy`] stands between a client and a server and can stop carrying
//! bytes while every connection stays open: what a dead NAT entry or a
//! wedged proxy looks like to both ends (no reset, no FIN, keepalive of a
//! paused peer still answered by its kernel). Freezing a server with
//! SIGSTOP ([`pause_processes`]) is the other way to get there.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::Error;

mod api;
pub use api::FaultyApi;

/// How often a stalled pump looks whether it may carry bytes again.
const POLL: Duration = Duration::from_millis(20);

#[derive(Default)]
struct ProxyState {
    stalled: AtomicBool,
    stopped: AtomicBool,
    /// Every connection's two sockets, to close them when the proxy stops.
    sockets: Mutex<Vec<TcpStream>>,
    accepted: AtomicU64,
}

/// A TCP proxy on `127.0.0.1` in front of `target` that can stall.
pub struct StallProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    acceptor: Option<JoinHandle<()>>,
}

impl StallProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub fn start(target: SocketAddr) -> Result<Self, Error> {
        let listener =
            TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("bind the stall proxy", e))?;
        let addr = listener.local_addr().map_err(|e| Error::io("stall proxy address", e))?;
        let state = Arc::new(ProxyState::default());
        let shared = state.clone();
        let acceptor = std::thread::Builder::new()
            .name("stall-proxy".into())
            .spawn(move || accept(listener, target, &shared))
            .map_err(|e| Error::io("spawn the stall proxy", e))?;
        Ok(Self { addr, state, acceptor: Some(acceptor) })
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops carrying bytes in both directions; connections stay open, new
    /// ones are accepted and carry nothing either.
    pub fn stall(&self) {
        self.state.stalled.store(true, Ordering::SeqCst);
    }

    /// Carries bytes again, what was held back first.
    pub fn resume(&self) {
        self.state.stalled.store(false, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        for socket in self.state.sockets.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        // Wakes the acceptor blocked in accept().
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: TcpListener, target: SocketAddr, state: &Arc<ProxyState>) {
    for client in listener.incoming() {
        if state.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(target) else { continue };
        state.accepted.fetch_add(1, Ordering::SeqCst);
        let pair = (client.try_clone(), server.try_clone(), client.try_clone(), server.try_clone());
        let (Ok(c1), Ok(s1), Ok(c2), Ok(s2)) = pair else { continue };
        state.sockets.lock().unwrap_or_else(|e| e.into_inner()).extend([c2, s2]);
        for (from, to) in [(client, s1), (server, c1)] {
            let state = state.clone();
            let _ = std::thread::Builder::new()
                .name("stall-proxy-pump".into())
                .spawn(move || pump(from, to, &state));
        }
    }
}

/// Copies `from` to `to` while not stalled; while stalled it reads nothing,
/// so the sender's bytes wait in its kernel buffers as on a dead path.
fn pump(mut from: TcpStream, mut to: TcpStream, state: &ProxyState) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if state.stopped.load(Ordering::SeqCst) {
            break;
        }
        if state.stalled.load(Ordering::SeqCst) {
            std::thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                while state.stalled.load(Ordering::SeqCst) && !state.stopped.load(Ordering::SeqCst)
                {
                    std::thread::sleep(POLL);
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Sends `signal` (`STOP`, `CONT`, `KILL`, ...) to process `pid`.
pub fn signal_process(pid: u32, signal: &str) -> Result<(), Error> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .map_err(|e| Error::io("run kill", e))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::msg(format!("kill -{signal} {pid} failed ({status})")))
    }
}

/// `pid` and every process below it (PostgreSQL serves each connection
/// from a child of the postmaster).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", tree[i])).into_iter().flatten();
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            tree.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        }
        i += 1;
    }
    tree
}

/// Freezes process `pid` and its children (SIGSTOP): their sockets stay
/// open and the kernel still acknowledges what arrives, but nothing
/// answers. Undo with [`resume_processes`].
pub fn pause_processes(pid: u32) -> Result<Vec<u32>, Error> {
    let tree = process_tree(pid);
    for p in &tree {
        signal_process(*p, "STOP")?;
    }
    Ok(tree)
}

/// Lets processes frozen by [`pause_processes`] run again.
pub fn resume_processes(tree: &[u32]) -> Result<(), Error> {
    for p in tree {
        signal_process(*p, "CONT")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn round_trip(stream: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(text)?;
        let mut got = vec![0u8; text.len()];
        stream.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn a_stalled_proxy_carries_nothing_and_closes_nothing_until_resumed() {
        let proxy = StallProxy::start(echo_server()).unwrap();
        let mut stream = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        assert_eq!(round_trip(&mut stream, b"one").unwrap(), b"one");

        proxy.stall();
        let err = round_trip(&mut stream, b"two").unwrap_err();
        assert!(
            matches!(err.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            "a stall is silence, not a reset: {err}"
        );
        proxy.resume();
        let mut late = vec![0u8; 3];
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.read_exact(&mut late).unwrap();
        assert_eq!(late, b"two", "what was held back arrives after the stall");
        assert_eq!(proxy.accepted(), 1);

        drop(proxy);
        let mut buf = [0u8; 1];
        assert_eq!(stream.read(&mut buf).unwrap_or(0), 0, "a stopped proxy closes its connections");
    }
}
