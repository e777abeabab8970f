//! Shared harness for the integration tests: a real chunkd on 127.0.0.1:0 with a real SQLite
//! index in a temporary directory, and a small client that speaks the chunk protocol.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod binary;

use chunkd::auth::{Claims, JwtKey};
use chunkd::{App, Config};
use serde_json::Value;

/// A running chunkd. Dropping it shuts the server down (and waits for it).
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub data: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts chunkd on `data` with the default configuration.
    pub fn start(data: &Path) -> TestServer {
        Self::start_with(Config::for_data_dir(data))
    }

    /// Starts chunkd with a given configuration, on its own runtime thread so that a test can
    /// stop it and start another on the same data directory.
    pub fn start_with(mut config: Config) -> TestServer {
        config.net.listen = "127.0.0.1:0".parse().unwrap();
        let data = config.storage.data.clone();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = App::open(config).expect("chunkd opens its data directory");
                let listener = tokio::net::TcpListener::bind(app.config.net.listen)
                    .await
                    .unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                chunkd::serve(app, listener, async {
                    let _ = stopped.await;
                })
                .await;
            });
        });
        let addr = addr_rx.recv().expect("server started");
        TestServer {
            addr,
            data,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops the server and waits until it has let go of its data directory.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Deterministic test data in which every 8-byte word is distinct (so a misplaced chunk shows).
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut i = 0u64;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&(x ^ i).to_le_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// A PNG of `w` × `h` pixels.
pub fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Which parameter names a client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Resumable,
    Flow,
}

/// How a chunk travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Raw body, parameters in the query string.
    Octet,
    /// Multipart, parameters in the form fields and the query (as Resumable.js sends them).
    MultipartBoth,
    /// Multipart, parameters in the form fields only (as Flow.js sends them).
    MultipartForm,
}

/// One file being uploaded the way Resumable.js or Flow.js cuts it.
#[derive(Clone)]
pub struct Upload {
    pub dialect: Dialect,
    pub identifier: String,
    pub filename: String,
    pub mime: String,
    pub data: Arc<Vec<u8>>,
    pub chunk_size: usize,
    pub force_chunk_size: bool,
}

impl Upload {
    pub fn new(identifier: &str, data: Vec<u8>, chunk_size: usize) -> Upload {
        Upload {
            dialect: Dialect::Resumable,
            identifier: identifier.to_string(),
            filename: format!("{identifier}.bin"),
            mime: "application/octet-stream".into(),
            data: Arc::new(data),
            chunk_size,
            force_chunk_size: false,
        }
    }

    pub fn total_chunks(&self) -> usize {
        let s = self.data.len();
        let t = if self.force_chunk_size {
            s.div_ceil(self.chunk_size)
        } else {
            s / self.chunk_size
        };
        t.max(1)
    }

    /// Bytes of chunk `n` (1-based) under the cutting rule.
    pub fn chunk(&self, n: usize) -> &[u8] {
        let t = self.total_chunks();
        let start = (n - 1) * self.chunk_size;
        let end = if n == t {
            self.data.len()
        } else {
            start + self.chunk_size
        };
        &self.data[start..end]
    }

    /// The protocol parameters of chunk `n`.
    pub fn params(&self, n: usize) -> Vec<(String, String)> {
        let p = match self.dialect {
            Dialect::Resumable => "resumable",
            Dialect::Flow => "flow",
        };
        let mut v = vec![
            (format!("{p}ChunkNumber"), n.to_string()),
            (format!("{p}ChunkSize"), self.chunk_size.to_string()),
            (
                format!("{p}CurrentChunkSize"),
                self.chunk(n).len().to_string(),
            ),
            (format!("{p}TotalSize"), self.data.len().to_string()),
            (format!("{p}Identifier"), self.identifier.clone()),
            (format!("{p}Filename"), self.filename.clone()),
            (format!("{p}RelativePath"), self.filename.clone()),
            (format!("{p}TotalChunks"), self.total_chunks().to_string()),
        ];
        if self.dialect == Dialect::Resumable {
            v.push(("resumableType".into(), self.mime.clone()));
        }
        v
    }

    pub fn query(&self, n: usize) -> String {
        serde_urlencoded::to_string(self.params(n)).unwrap()
    }
}

/// A small client for the chunk endpoint.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

/// A response: status and parsed JSON (or `Null`).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub json: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// The `file_id` every chunk reply carries.
    pub fn file_id(&self) -> String {
        self.json["file_id"]
            .as_str()
            .expect("every chunk reply has file_id")
            .to_string()
    }
}

impl Client {
    pub fn new(server: &TestServer) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: server.url(""),
        }
    }

    /// A client whose every request carries `Authorization: Bearer <token>`.
    pub fn with_token(server: &TestServer, token: &str) -> Client {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("authorization", format!("Bearer {token}").parse().unwrap());
        Client {
            http: reqwest::Client::builder()
                .default_headers(h)
                .build()
                .unwrap(),
            base: server.url(""),
        }
    }

    /// Reads a whole response into a [`Reply`].
    pub async fn reply(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            json,
            headers,
        }
    }

    /// Sends chunk `n` of `up`.
    pub async fn send(&self, up: &Upload, n: usize, via: Via) -> Reply {
        self.send_bytes(up, n, via, up.chunk(n).to_vec()).await
    }

    /// Sends `body` as chunk `n` of `up` (for tests that lie about the bytes).
    pub async fn send_bytes(&self, up: &Upload, n: usize, via: Via, body: Vec<u8>) -> Reply {
        let url = format!("{}/upload", self.base);
        let req = match via {
            Via::Octet => self
                .http
                .post(format!("{url}?{}", up.query(n)))
                .header("content-type", "application/octet-stream")
                .body(body),
            Via::MultipartBoth | Via::MultipartForm => {
                let mut form = reqwest::multipart::Form::new();
                for (k, v) in up.params(n) {
                    form = form.text(k, v);
                }
                let part = reqwest::multipart::Part::bytes(body).file_name(up.filename.clone());
                form = form.part("file", part);
                let target = if via == Via::MultipartBoth {
                    format!("{url}?{}", up.query(n))
                } else {
                    url
                };
                self.http.post(target).multipart(form)
            }
        };
        Self::reply(req.send().await.unwrap()).await
    }

    /// Chunk 1 of `up` sent both ways, as the GET probe and as a raw POST, with `query` as the
    /// query string: for tests of what either refuses.
    pub async fn probe_and_post(&self, up: &Upload, query: &str) -> [Reply; 2] {
        let url = format!("{}/upload?{query}", self.base);
        let probe = Self::reply(self.http.get(&url).send().await.unwrap()).await;
        let post = self
            .http
            .post(&url)
            .header("content-type", "application/octet-stream")
            .body(up.chunk(1).to_vec());
        [probe, Self::reply(post.send().await.unwrap()).await]
    }

    /// The GET probe for chunk `n`.
    pub async fn probe(&self, up: &Upload, n: usize) -> Reply {
        let url = format!("{}/upload?{}", self.base, up.query(n));
        Self::reply(self.http.get(url).send().await.unwrap()).await
    }

    pub async fn status(&self, identifier: &str) -> Reply {
        let q = serde_urlencoded::to_string([("resumableIdentifier", identifier)]).unwrap();
        Self::reply(
            self.http
                .get(format!("{}/upload/status?{q}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// The status of a complete upload once its previews are no longer `waiting` (at most 20 s).
    pub async fn status_previewed(&self, identifier: &str) -> Reply {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let r = self.status(identifier).await;
            assert_eq!(r.status, 200, "{:?}", r.json);
            if r.json["thumbnails_status"] != "waiting" {
                return r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "previews still waiting"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        Self::reply(
            self.http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Creates a Files API file in company `acme` as the Twake front end does: the query, a
    /// body of `{}`.
    pub async fn create_file(&self, token: &str, query: &str) -> Reply {
        let req = self
            .http
            .post(format!("{}{ACME_FILES}?{query}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body("{}");
        Self::reply(req.send().await.unwrap()).await
    }

    /// Downloads a file's bytes, asserting a 200.
    pub async fn download(&self, file_id: &str) -> Vec<u8> {
        let resp = self
            .http
            .get(format!("{}/files/{file_id}", self.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        resp.bytes().await.unwrap().to_vec()
    }

    /// Uploads every chunk of `up` in order, checks that the last one completed the file, and
    /// returns the file id.
    pub async fn upload_all(&self, up: &Upload) -> String {
        let order: Vec<usize> = (1..=up.total_chunks()).collect();
        let last = self.upload_in_order(up, &order, Via::Octet).await;
        assert_eq!(last.json["complete"], true, "{:?}", last.json);
        assert_eq!(last.json["completed_now"], true, "{:?}", last.json);
        let id = last.file_id();
        assert_eq!(last.json["download_url"], format!("/files/{id}").as_str());
        id
    }

    /// Uploads every chunk in the given order and returns the last reply.
    pub async fn upload_in_order(&self, up: &Upload, order: &[usize], via: Via) -> Reply {
        let mut last = None;
        for &n in order {
            let r = self.send(up, n, via).await;
            assert_eq!(r.status, 200, "chunk {n}: {:?}", r.json);
            last = Some(r);
        }
        last.unwrap()
    }
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The files in the spool: data files and thumbnails.
pub fn spool_files(data: &Path) -> Vec<PathBuf> {
    let spool = data.join("spool");
    if spool.exists() {
        files_under(&spool)
    } else {
        Vec::new()
    }
}

/// The disk space the spool's files take (allocated blocks, not apparent sizes): what a chunk
/// whose write failed must not leave behind.
pub fn spool_bytes(data: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    spool_files(data)
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().blocks() * 512)
        .sum()
}

/// Each data file in the spool: (upload id, apparent size).
pub fn data_files(data: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = spool_files(data)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "data"))
        .map(|p| {
            let upload = p.parent().unwrap().file_name().unwrap();
            let size = std::fs::metadata(&p).unwrap().len();
            (upload.to_string_lossy().into_owned(), size)
        })
        .collect();
    out.sort();
    out
}

/// The Files API route of company `acme`'s files.
pub const ACME_FILES: &str = "/internal/services/files/v1/companies/acme/files";

/// The secret the tests sign tokens with (`config.auth.secret.value`, or `CHUNKD_JWT_SECRET`).
pub const SECRET: &str = "a test secret that is long enough for HS256 use";

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims valid for an hour: a user's, or an application's with `app`.
pub fn claims(sub: &str, companies: &[&str], app: Option<&str>) -> Claims {
    Claims {
        sub: sub.into(),
        exp: now() + 3600,
        nbf: None,
        iat: Some(now()),
        companies: companies.iter().map(|c| c.to_string()).collect(),
        application_id: app.map(str::to_string),
    }
}

/// A token signed with [`SECRET`].
pub fn mint(c: &Claims) -> String {
    JwtKey::new(SECRET.as_bytes()).unwrap().mint(c)
}

/// A user's token for one company.
pub fn user(sub: &str, company: &str) -> String {
    mint(&claims(sub, &[company], None))
}

/// An application's token for one company.
pub fn application(id: &str, company: &str) -> String {
    mint(&claims(id, &[company], Some(id)))
}
