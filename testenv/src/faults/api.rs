//! [`FaultyApi`]: an HTTPS proxy in front of the API server that answers
//! some requests itself with 429 Too Many Requests or 503 Service
//! Unavailable, as an overloaded or restarting API server (or a load
//! balancer in front of it) does.
//!
//! It serves with the API server's own certificate (valid for 127.0.0.1),
//! so a client needs only the port changed in its kubeconfig, and speaks
//! HTTP/1.1 request by request: each request is either answered by the
//! proxy or forwarded, and its response (watch streams included, chunk by
//! chunk) relayed back.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
};

use native_tls::{Certificate, Identity, TlsAcceptor, TlsConnector, TlsStream};

use crate::{process::run, ControlPlaneInfo, Error};

#[derive(Default)]
struct State {
    /// Every n-th request is answered by the proxy; 0: none.
    every: AtomicU64,
    requests: AtomicU64,
    injected: AtomicU64,
    stopped: AtomicBool,
    sockets: Mutex<Vec<TcpStream>>,
}

/// The proxy; stops (closing every connection) when dropped.
pub struct FaultyApi {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultyApi {
    /// Listens on a free loopback port in front of the control plane of
    /// `info`; forwards everything until told to inject.
    pub fn start(info: &ControlPlaneInfo) -> Result<Self, Error> {
        let cert_dir =
            info.ca_cert.parent().ok_or_else(|| Error::msg("no certificate directory"))?;
        let chain = std::fs::read(&info.ca_cert)
            .map_err(|e| Error::io("read the API server's certificate", e))?;
        // native-tls wants the key as PKCS#8; the API server writes PKCS#1.
        let key_path = cert_dir.join("fault-proxy.key");
        let source = cert_dir.join("apiserver.key");
        run(
            "openssl",
            &["pkey", "-in", &source.to_string_lossy(), "-out", &key_path.to_string_lossy()],
        )?;
        let key = std::fs::read(&key_path).map_err(|e| Error::io("read the proxy's key", e))?;
        let identity = Identity::from_pkcs8(&chain, &key)
            .map_err(|e| Error::msg(format!("proxy identity: {e}")))?;
        let acceptor =
            TlsAcceptor::new(identity).map_err(|e| Error::msg(format!("proxy TLS: {e}")))?;
        let mut connector = TlsConnector::builder();
        for pem in pem_blocks(&chain) {
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| Error::msg(format!("API server CA: {e}")))?;
            connector.add_root_certificate(cert);
        }
        let connector =
            connector.build().map_err(|e| Error::msg(format!("proxy TLS client: {e}")))?;
        let upstream: SocketAddr = info
            .server
            .trim_start_matches("https://")
            .parse()
            .map_err(|_| Error::msg(format!("API server address {}", info.server)))?;

        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| Error::io("bind the API fault proxy", e))?;
        let addr = listener.local_addr().map_err(|e| Error::io("API fault proxy address", e))?;
        let state = Arc::new(State::default());
        let shared = state.clone();
        let acceptor = std::thread::Builder::new()
            .name("api-fault-proxy".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if shared.stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let (tls, connector, state) =
                        (acceptor.clone(), connector.clone(), shared.clone());
                    let _ = std::thread::Builder::new().name("api-fault-proxy-conn".into()).spawn(
                        move || {
                            let _ = serve(client, &tls, &connector, upstream, &state);
                        },
                    );
                }
            })
            .map_err(|e| Error::io("spawn the API fault proxy", e))?;
        Ok(Self { addr, state, acceptor: Some(acceptor) })
    }

    /// Answers every `n`-th request from now on itself, 429 and 503 in turn;
    /// 0 forwards everything again.
    pub fn inject_every(&self, n: u64) {
        self.state.every.store(n, Ordering::SeqCst);
    }

    /// Requests answered by the proxy so far.
    pub fn injected(&self) -> u64 {
        self.state.injected.load(Ordering::SeqCst)
    }

    /// Requests seen so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// A copy of the kubeconfig of `info` that goes through the proxy,
    /// written to `out`.
    pub fn kubeconfig(&self, info: &ControlPlaneInfo, out: PathBuf) -> Result<PathBuf, Error> {
        let text = std::fs::read_to_string(&info.kubeconfig)
            .map_err(|e| Error::io("read kubeconfig", e))?;
        let proxied =
            text.replace(&info.server, &format!("https://127.0.0.1:{}", self.addr.port()));
        std::fs::write(&out, proxied).map_err(|e| Error::io("write kubeconfig", e))?;
        Ok(out)
    }
}

impl Drop for FaultyApi {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        for socket in self.state.sockets.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn pem_blocks(bundle: &[u8]) -> Vec<Vec<u8>> {
    const END: &str = "-----END CERTIFICATE-----";
    String::from_utf8_lossy(bundle)
        .split_inclusive(END)
        .filter(|b| b.contains(END))
        .map(|b| b.trim_start().as_bytes().to_vec())
        .collect()
}

type Io<T> = std::io::Result<T>;

/// One client connection: request by request, answered here or forwarded.
fn serve(
    client: TcpStream,
    tls: &TlsAcceptor,
    connector: &TlsConnector,
    upstream: SocketAddr,
    state: &State,
) -> Io<()> {
    let tcp = TcpStream::connect(upstream)?;
    {
        let mut sockets = state.sockets.lock().unwrap_or_else(|e| e.into_inner());
        sockets.push(client.try_clone()?);
        sockets.push(tcp.try_clone()?);
    }
    let client = tls.accept(client).map_err(std::io::Error::other)?;
    let server = connector.connect("127.0.0.1", tcp).map_err(std::io::Error::other)?;
    let mut client = BufReader::new(client);
    let mut server = BufReader::new(server);
    loop {
        let Some(head) = read_head(&mut client)? else { return Ok(()) };
        let body = read_body(&mut client, &head)?;
        let n = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let every = state.every.load(Ordering::SeqCst);
        if every > 0 && n % every == 0 {
            let injected = state.injected.fetch_add(1, Ordering::SeqCst);
            client.get_mut().write_all(&fault_response(injected % 2 == 0))?;
            continue;
        }
        server.get_mut().write_all(head.as_bytes())?;
        server.get_mut().write_all(&body)?;
        if !relay_response(&mut server, client.get_mut(), head.starts_with("HEAD "))? {
            return Ok(());
        }
    }
}

fn fault_response(too_many: bool) -> Vec<u8> {
    let (code, text, reason) = if too_many {
        (429, "Too Many Requests", "TooManyRequests")
    } else {
        (503, "Service Unavailable", "ServiceUnavailable")
    };
    let body = format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"injected by the test's fault proxy","reason":"{reason}","code":{code}}}"#
    );
    format!(
        "HTTP/1.1 {code} {text}\r\nContent-Type: application/json\r\nRetry-After: 1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A message's start line and headers, through the blank line; `None` at
/// the end of the connection.
fn read_head<R: BufRead>(reader: &mut R) -> Io<Option<String>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        head.push_str(&line);
        if line == "\r\n" || line == "\n" {
            return Ok(Some(head));
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn is_chunked(head: &str) -> bool {
    header(head, "transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

/// A request's body (kube's requests have a Content-Length or none).
fn read_body<R: BufRead>(reader: &mut R, head: &str) -> Io<Vec<u8>> {
    if is_chunked(head) {
        let mut body = Vec::new();
        copy_chunked(reader, &mut body)?;
        return Ok(body);
    }
    let length = header(head, "content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(body)
}

/// Copies chunks through the last one, flushing each (a watch is a stream).
fn copy_chunked<R: BufRead, W: Write>(reader: &mut R, out: &mut W) -> Io<()> {
    loop {
        let mut size_line = String::new();
        if reader.read_line(&mut size_line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        out.write_all(size_line.as_bytes())?;
        let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        if size == 0 {
            // Trailers, through the blank line.
            loop {
                let mut line = String::new();
                reader.read_line(&mut line)?;
                out.write_all(line.as_bytes())?;
                if line == "\r\n" || line.is_empty() {
                    return out.flush();
                }
            }
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        out.write_all(&chunk)?;
        out.flush()?;
    }
}

/// Relays one response; `false` when the connection ends with it.
fn relay_response(
    server: &mut BufReader<TlsStream<TcpStream>>,
    client: &mut TlsStream<TcpStream>,
    head_request: bool,
) -> Io<bool> {
    let Some(head) = read_head(server)? else { return Ok(false) };
    client.write_all(head.as_bytes())?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    if head_request || status / 100 == 1 || status == 204 || status == 304 {
        client.flush()?;
        return Ok(true);
    }
    if is_chunked(&head) {
        copy_chunked(server, client)?;
    } else if let Some(length) = header(&head, "content-length").and_then(|v| v.parse::<u64>().ok())
    {
        std::io::copy(&mut server.by_ref().take(length), client)?;
    } else {
        std::io::copy(server, client)?;
        return Ok(false);
    }
    client.flush()?;
    Ok(!header(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close")))
}
