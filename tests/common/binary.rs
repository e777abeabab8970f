//! The real `chunkd` binary as a child process, for the tests that kill or signal it, and an
//! audit of a stopped server's spool against its index.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};

use rusqlite::{Connection, OpenFlags};

use super::SECRET;

/// A running chunkd process.
pub struct Chunkd {
    child: Option<Child>,
    pub base: String,
    pub port: u16,
    /// Kept open: chunkd writes nothing after its first line, but a closed pipe is not its
    /// business.
    _stdout: BufReader<ChildStdout>,
}

impl Chunkd {
    /// Starts chunkd on `data` (safe durability unless `args` say otherwise), on a free port, and
    /// waits for its one line.
    pub fn start(data: &Path, args: &[&str]) -> Chunkd {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chunkd"))
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(args)
            .env("CHUNKD_JWT_SECRET", SECRET)
            .env("CHUNKD_LOG", "chunkd=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("chunkd starts");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let port: u16 = line
            .trim_end()
            .strip_prefix("chunkd listening on http://127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        Chunkd {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            port,
            _stdout: out,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal by name (`TERM`, `INT`) without waiting.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name}");
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(mut self) {
        let mut c = self.child.take().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Waits for the process to exit.
    pub fn wait(mut self) -> ExitStatus {
        self.child.take().unwrap().wait().unwrap()
    }

    /// SIGTERM, and wait for the exit.
    pub fn stop(self) -> ExitStatus {
        self.signal("TERM");
        self.wait()
    }
}

impl Drop for Chunkd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The index of `data`, opened read-only (safe beside a running server: it is in WAL mode).
pub fn index(data: &Path) -> Connection {
    Connection::open_with_flags(data.join("index.sqlite"), OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("the index opens read-only")
}

/// What [`audit`] found wrong.
#[derive(Debug, Default)]
pub struct Audit {
    /// Spool directories and files no row owns.
    pub orphans: Vec<PathBuf>,
    /// Committed chunks and thumbnails whose bytes are missing or cut short.
    pub missing: Vec<String>,
    /// Committed chunks whose regions of a data file overlap.
    pub overlaps: Vec<String>,
    /// Data files holding more disk space than their committed chunks need (plus a block per
    /// region boundary): bytes of writes that never committed and were not given back.
    pub litter: Vec<String>,
}

impl Audit {
    /// Nothing missing and nothing unowned, bytes of cut-off writes included.
    pub fn clean(&self) -> bool {
        self.orphans.is_empty()
            && self.missing.is_empty()
            && self.overlaps.is_empty()
            && self.litter.is_empty()
    }
}

/// Compares the spool of `data` with its index. Call it while nothing writes.
pub fn audit(data: &Path) -> Audit {
    use std::os::unix::fs::MetadataExt;
    let db = index(data);
    let sealed = |len: u64| (len / 16 + 1) * 16;
    // Per upload: the files it owns by name, with their sizes, and its data file's regions.
    let mut files: HashMap<String, HashMap<String, u64>> = HashMap::new();
    let mut regions: HashMap<String, Vec<(u64, u64, u64)>> = HashMap::new();
    let mut st = db.prepare("SELECT id FROM uploads").unwrap();
    for id in st.query_map([], |r| r.get::<_, String>(0)).unwrap() {
        files.insert(id.unwrap(), HashMap::new());
    }
    let mut st = db
        .prepare(
            "SELECT upload_id, number, nonce, len, pos FROM chunks \
             UNION ALL SELECT upload_id, -idx - 1, nonce, len, NULL FROM thumbnails",
        )
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
                r.get::<_, Option<i64>>(4)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (upload, n, nonce, len, pos) = row.unwrap();
        match pos {
            Some(pos) => {
                regions
                    .entry(upload)
                    .or_default()
                    .push((pos as u64, sealed(len), n as u64))
            }
            None => {
                let name = if n < 0 {
                    format!("t{}.{nonce:016x}", -n - 1)
                } else {
                    format!("{n}.{nonce:016x}")
                };
                files.entry(upload).or_default().insert(name, sealed(len));
            }
        }
    }
    let mut audit = Audit::default();
    let spool = data.join("spool");
    let mut seen: HashSet<(String, String)> = HashSet::new();
    if spool.exists() {
        for dir in std::fs::read_dir(&spool).unwrap() {
            let dir = dir.unwrap();
            let upload = dir.file_name().to_string_lossy().into_owned();
            let Some(owned) = files.get(&upload) else {
                audit.orphans.push(dir.path());
                continue;
            };
            for f in std::fs::read_dir(dir.path()).unwrap() {
                let f = f.unwrap();
                let name = f.file_name().to_string_lossy().into_owned();
                let meta = f.metadata().unwrap();
                if name == "data" {
                    let mut r = regions.get(&upload).cloned().unwrap_or_default();
                    r.sort_unstable();
                    let mut end = 0;
                    for &(pos, len, n) in &r {
                        if pos < end {
                            audit.overlaps.push(format!("{upload}: chunk {n} at {pos}"));
                        }
                        end = end.max(pos + len);
                        if meta.len() < pos + len {
                            audit
                                .missing
                                .push(format!("{upload}/data: chunk {n} cut short"));
                        }
                    }
                    let need: u64 = r.iter().map(|&(_, len, _)| len).sum();
                    let slack = 4096 * (2 * r.len() as u64 + 1);
                    let held = meta.blocks() * 512;
                    if held > need + slack {
                        audit.litter.push(format!(
                            "{upload}/data: {held} bytes on disk for {need} bytes of chunks"
                        ));
                    }
                    seen.insert((upload.clone(), name));
                    continue;
                }
                match owned.get(&name) {
                    Some(&len) if meta.len() == len => {
                        seen.insert((upload.clone(), name));
                    }
                    Some(_) => audit.missing.push(format!("{upload}/{name} (wrong size)")),
                    None => audit.orphans.push(f.path()),
                }
            }
        }
    }
    for (upload, owned) in &files {
        for name in owned.keys() {
            if !seen.contains(&(upload.clone(), name.clone())) {
                audit.missing.push(format!("{upload}/{name}"));
            }
        }
    }
    for (upload, r) in &regions {
        if !seen.contains(&(upload.clone(), "data".to_string())) {
            audit
                .missing
                .push(format!("{upload}/data ({} chunks)", r.len()));
        }
    }
    audit
}

/// A tiny seeded generator (xorshift64*), so that a failing run can be replayed from its seed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `var` if set, else from the clock; prints the seed either way.
    pub fn from_env(var: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("seed: {var}={seed}");
        Rng::seeded(seed)
    }

    pub fn seeded(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.range(0, i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}
