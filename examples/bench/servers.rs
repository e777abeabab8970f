//! The servers under test, each a child process so that its CPU time and peak memory can be read
//! from `/proc/<pid>`: chunkd itself, and the bench binary in its `--serve` mode (a discard sink,
//! a hello-world and a blob source on one minimal hyper server).

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;

/// A server started by the bench. Dropping it kills it (by its pid) and reaps it.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// Where its stderr goes, shown if it fails.
    log: PathBuf,
}

impl Server {
    /// Starts `cmd` (stdout piped) and waits for its `... listening on http://IP:PORT` line.
    pub fn start(mut cmd: Command, log: PathBuf) -> Result<Server, String> {
        let err = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err));
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining, so that the child never blocks on a full pipe.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let mut server = Server {
            child,
            addr: "127.0.0.1:0".parse().expect("literal"),
            log,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| format!("no listening line; log:\n{}", server.log_text()))?;
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                format!(
                    "unexpected first line {line:?}; log:\n{}",
                    server.log_text()
                )
            })?;
        if !matches!(addr, SocketAddr::V4(a) if a.ip().is_loopback()) {
            return Err(format!("the server listens on {addr}, not on 127.0.0.1"));
        }
        server.addr = addr;
        Ok(server)
    }

    /// Starts `cmd`, which listens on `addr` (told on its command line), and waits until that
    /// port accepts a connection: for servers that print no listening line.
    pub fn start_on(mut cmd: Command, addr: SocketAddr, log: PathBuf) -> Result<Server, String> {
        let err = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::from(err.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", cmd.get_program()))?;
        let mut server = Server { child, addr, log };
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            if std::time::Instant::now() > until || matches!(server.child.try_wait(), Ok(Some(_))) {
                return Err(format!(
                    "nothing listens on {addr}; log:\n{}",
                    server.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The tail of the server's stderr.
    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut start = text.len().saturating_sub(4000);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_string()
    }

    /// CPU seconds (user + system) used by the process so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.pid()))
    }

    /// Peak resident set (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// Starts [`Server::peak_rss`] again from the current resident set (`clear_refs` mode 5),
    /// so that a phase's peak is its own, not an earlier phase's. False if the kernel refused.
    pub fn reset_peak_rss(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").is_ok()
    }
}

impl Drop for Server {
    /// SIGTERM (chunkd shuts down gracefully; a profiler wrapping it writes its data), then
    /// SIGKILL after twenty seconds.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clock ticks per second, for `/proc/<pid>/stat`.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime of a `/proc/.../stat` file, in seconds (0 if unreadable).
pub fn cpu_seconds(stat_path: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(stat_path) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the file; `rest` starts at field 3.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn proc_status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Starts chunkd on 127.0.0.1:0 with a fresh data directory under `dir`.
pub fn start_chunkd(bin: &Path, dir: &Path, durability: &str) -> Result<Server, String> {
    let data = dir.join("data");
    let mut cmd = Command::new(bin);
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data")
        .arg(&data)
        .arg("--durability")
        .arg(durability)
        .arg("--static-dir")
        .arg(dir.join("no-static"))
        .env("CHUNKD_LOG", "warn");
    Server::start(cmd, dir.join("chunkd.log"))
}

/// Starts the bench binary in its `--serve` mode.
pub fn start_baseline(dir: &Path) -> Result<Server, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--serve");
    Server::start(cmd, dir.join("baseline.log"))
}

type Body = BoxBody<Bytes, Infallible>;

/// Bytes of the blob the source serves, repeated.
const BLOB_PIECE: usize = 1 << 20;

/// The `--serve` mode: a minimal hyper server with the same runtime and connection settings as
/// chunkd (multi-thread runtime, HTTP/1.1 keep-alive, TCP_NODELAY):
/// * `POST`/`PUT` anything: the **discard sink**, reads the body and drops it, answers a small
///   JSON reply;
/// * `GET /blob?len=N`: the **source**, N bytes from memory (a 1 MiB buffer, shared);
/// * `GET` anything else: **hello-world**.
///
/// It exits when its stdin closes, so it never outlives the bench.
pub fn serve_baseline() {
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        println!(
            "baseline listening on http://{}",
            listener.local_addr().unwrap()
        );
        let piece = Bytes::from(vec![0x5au8; BLOB_PIECE]);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let piece = piece.clone();
            let service = service_fn(move |req| handle(req, piece.clone()));
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

async fn handle(req: Request<Incoming>, piece: Bytes) -> Result<Response<Body>, Infallible> {
    if req.method() == Method::POST || req.method() == Method::PUT {
        let mut body = req.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Ok(d) = f.into_data() {
                        n += d.len() as u64;
                    }
                }
                Err(_) => break,
            }
        }
        let reply = format!("{{\"complete\":false,\"received\":{n}}}");
        return Ok(Response::builder()
            .header("content-type", "application/json")
            .body(full(reply))
            .expect("valid"));
    }
    if req.uri().path() == "/blob" {
        let len: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("len="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let pieces = (0..len.div_ceil(BLOB_PIECE as u64)).map(move |i| {
            let n = (len - i * BLOB_PIECE as u64).min(BLOB_PIECE as u64) as usize;
            Ok::<_, Infallible>(Frame::data(piece.slice(..n)))
        });
        let body = StreamBody::new(futures_util::stream::iter(pieces)).boxed();
        return Ok(Response::builder()
            .header("content-type", "application/octet-stream")
            .header("content-length", len)
            .body(body)
            .expect("valid"));
    }
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .body(full("Hello, World!"))
        .expect("valid"))
}

/// The tus peer's script, if its packages are installed (`npm ci --prefix examples/bench/tus`).
pub fn tus_script() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bench/tus");
    dir.join("node_modules/@tus/server")
        .is_dir()
        .then(|| dir.join("server.mjs"))
}

/// Starts the tus peer (`@tus/server` with `@tus/file-store`, on node) storing into `store`.
pub fn start_tus(script: &Path, store: &Path, dir: &Path) -> Result<Server, String> {
    std::fs::create_dir_all(store).map_err(|e| format!("{}: {e}", store.display()))?;
    let mut cmd = Command::new("node");
    cmd.arg(script).arg(store);
    Server::start(cmd, dir.join("tus.log"))
}

/// The rustus binary: `given`, or `rustus` on the PATH.
pub fn rustus_binary(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = given {
        return Some(p.to_path_buf());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("rustus"))
        .find(|p| p.is_file())
}

/// Starts rustus storing into `store`, on a free port of 127.0.0.1, accepting bodies of one
/// chunk (its default limit is 256 KiB), hooks and logs as quiet as it allows.
pub fn start_rustus(bin: &Path, store: &Path, dir: &Path, chunk: u64) -> Result<Server, String> {
    std::fs::create_dir_all(store).map_err(|e| format!("{}: {e}", store.display()))?;
    // A port the system has just handed out; it is free again once this listener closes.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("a free port: {e}"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--host")
        .arg("127.0.0.1")
        .arg("--port")
        .arg(addr.port().to_string())
        .arg("--data-dir")
        .arg(store)
        .arg("--info-dir")
        .arg(dir.join("info"))
        .arg("--max-body-size")
        .arg((chunk + 4096).to_string())
        .arg("--log-level")
        .arg("ERROR")
        .current_dir(dir);
    std::fs::create_dir_all(dir.join("info")).map_err(|e| format!("info dir: {e}"))?;
    Server::start_on(cmd, addr, dir.join("rustus.log"))
}
