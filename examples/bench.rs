//! The chunkd load generator and its baselines, measured side by side in one run.
//!
//! ```text
//! cargo run --release --example bench                   # everything, 3 runs, medians
//! cargo run --release --example bench -- --runs 5 --only fast,sink
//! cargo run --release --example bench -- --files 2 --size 16MiB --runs 1   # a quick look
//! ```
//!
//! It builds `chunkd` (`cargo build --release --bin chunkd`, unless `--server-bin` or
//! `--no-build`), then, for every run, starts each server as a child process on 127.0.0.1:0
//! with a fresh temporary data directory, and drives it over real HTTP/1.1 keep-alive
//! connections with a lean client (data generated once, sent as `Bytes` slices, each chunk's
//! bytes distinct). Scenarios (`--only` takes a comma-separated subset):
//!
//! | name | what |
//! |---|---|
//! | `cipher` | chunkd's two-layer cipher in memory (`chunkd::crypto`), per core, and one `cbc` chain |
//! | `openssl` | `openssl speed -evp aes-256-cbc` (16 KiB), encrypt and decrypt |
//! | `sink` | the same uploads against a minimal hyper server that drops the bytes |
//! | `source` | the same downloads from a minimal hyper server that sends bytes from memory |
//! | `fast` | chunkd `--durability fast`, octet, K in flight; then `download` and a SHA-256 check |
//! | `multipart` | the same in `multipart/form-data` |
//! | `many` | octet, `--many` (64) in flight |
//! | `big` | octet, `--big-chunk` (100 MB) chunks: memory must stay flat |
//! | `gib` | one file of N×S bytes (1 GiB by default): the completing chunk's latency |
//! | `dd` | `dd if=/dev/zero bs=1M conv=fdatasync` of N×S bytes in the same directory |
//! | `safe` | chunkd `--durability safe`, octet, K in flight |
//! | `probe` | keep-alive GET probes/s on an active upload vs a hyper hello-world (wrk if installed) |
//! | `tus` | the peer: `@tus/server` with `@tus/file-store` (node), the same files over tus, then a SHA-256 check of what it stored; skipped unless `npm ci --prefix examples/bench/tus` has run |
//! | `rustus` | the peer rustus (`--rustus-bin`, or on the PATH), the same way; skipped without it |
//!
//! It prints one table per kind of figure (medians over `--runs`), the ratios against the
//! targets of issue 6, and one JSON line with every median and every run's raw figures.
//! Server CPU time is utime+stime from `/proc/<pid>/stat` around a phase; peak memory is the
//! server's VmHWM, reset (`/proc/<pid>/clear_refs`) before a download phase so that its figure
//! is the download's own. MB/s are 10^6 bytes per second. Traffic goes to 127.0.0.1 only.

#[path = "bench/baselines.rs"]
mod baselines;
#[path = "bench/client.rs"]
mod client;
#[path = "bench/load.rs"]
mod load;
#[path = "bench/servers.rs"]
mod servers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use sha2::{Digest, Sha256};

use load::{Plan, Upload, Wire};
use servers::Server;

const SCENARIOS: &[&str] = &[
    "cipher",
    "openssl",
    "sink",
    "source",
    "fast",
    "download",
    "multipart",
    "many",
    "big",
    "gib",
    "dd",
    "safe",
    "probe",
    "tus",
    "rustus",
];

/// Load generator for chunkd, with its baselines measured in the same run.
#[derive(Parser, Debug)]
#[command(name = "bench")]
struct Args {
    /// Files per upload phase.
    #[arg(long, default_value_t = 8)]
    files: usize,
    /// Bytes per file (K, M, G: powers of 1000; KiB, MiB, GiB: powers of 1024).
    #[arg(long, default_value = "128MiB", value_parser = chunkd::config::parse_size)]
    size: u64,
    /// Chunk size.
    #[arg(long, default_value = "1MiB", value_parser = chunkd::config::parse_size)]
    chunk: u64,
    /// Chunk requests in flight (one keep-alive connection each).
    #[arg(long, default_value_t = 3)]
    in_flight: usize,
    /// Requests in flight for the `many` scenario.
    #[arg(long, default_value_t = 64)]
    many: usize,
    /// Chunk size for the `big` scenario.
    #[arg(long, default_value = "100MB", value_parser = chunkd::config::parse_size)]
    big_chunk: u64,
    /// Runs of every scenario; the tables show medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Comma-separated scenarios (default: all). See the module documentation.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Directory for temporary data directories (default: the system temp dir). Its disk is the
    /// one `safe` and `dd` measure.
    #[arg(long)]
    tmp: Option<PathBuf>,
    /// The chunkd binary (default: build it with cargo, next to this example's target dir).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Do not run `cargo build --release --bin chunkd` first.
    #[arg(long)]
    no_build: bool,
    /// The rustus binary for the `rustus` scenario (default: `rustus` on the PATH; the
    /// scenario is skipped without one). `cargo install --locked rustus@0.5.10` builds it.
    #[arg(long)]
    rustus_bin: Option<PathBuf>,
    /// Worker threads of the client's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Seconds per probe measurement.
    #[arg(long, default_value_t = 3.0)]
    probe_secs: f64,
    /// Connections for probe measurements.
    #[arg(long, default_value_t = 32)]
    probe_conns: usize,
    /// Probe load generator: `wrk` (if installed) or this bench's own client.
    #[arg(long, default_value = "auto", value_parser = ["auto", "wrk", "client"])]
    probe_tool: String,
    /// Seconds per in-memory cipher measurement.
    #[arg(long, default_value_t = 1.0)]
    cipher_secs: f64,
    /// Seconds `openssl speed` runs per measurement.
    #[arg(long, default_value_t = 2)]
    openssl_secs: u32,
    /// Skip the SHA-256 check of every uploaded file (e.g. when profiling the upload alone).
    #[arg(long)]
    no_verify: bool,
    /// Longest any upload or download phase may take, in seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

/// Every figure of every run, by name.
#[derive(Default)]
struct Figures(BTreeMap<String, Vec<f64>>);

impl Figures {
    fn add(&mut self, key: impl Into<String>, v: f64) {
        if v.is_finite() {
            self.0.entry(key.into()).or_default().push(v);
        }
    }

    fn median(&self, key: &str) -> Option<f64> {
        let mut v = self.0.get(key)?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        Some(if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        })
    }

    fn range(&self, key: &str) -> Option<(f64, f64)> {
        let v = self.0.get(key)?;
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        v.first().map(|_| (lo, hi))
    }
}

struct Bench {
    args: Args,
    rt: tokio::runtime::Runtime,
    bin: PathBuf,
    tmp: PathBuf,
    pool: Bytes,
    plan: Plan,
    figs: Figures,
    /// Which probe tool was used.
    probe_tool: &'static str,
}

/// The server's CPU-seconds per GiB, or no figure (NaN, which is not recorded) when its
/// process used none: `--server-bin` is then a wrapper such as `perf record` whose child does
/// the work, and 0.00 would pass the CPU target.
fn server_cpu_per_gib(cpu: f64, gib: f64) -> f64 {
    if cpu > 0.0 { cpu / gib } else { f64::NAN }
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--serve") {
        servers::serve_baseline();
        return ExitCode::SUCCESS;
    }
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    if let Some(bad) = args.only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
        return Err(format!(
            "unknown scenario {bad:?}; known: {}",
            SCENARIOS.join(",")
        ));
    }
    if args.files == 0 || args.size == 0 || args.chunk == 0 || args.runs == 0 {
        return Err("--files, --size, --chunk and --runs must be positive".into());
    }
    if cfg!(debug_assertions) {
        eprintln!("bench: warning: built without optimisations; use `cargo run --release`");
    }
    let bin = chunkd_binary(&args)?;
    let base = args.tmp.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("chunkd-bench-")
        .tempdir_in(&base)
        .map_err(|e| format!("temp dir in {}: {e}", base.display()))?;
    let plan = Plan {
        files: args.files,
        size: args.size,
        chunk: args.chunk,
    };
    let gib = gib_plan(&plan);
    let pool_len = plan.pool_len().max(gib.pool_len());
    eprintln!(
        "bench: generating {} MiB of data; server {}",
        pool_len >> 20,
        bin.display()
    );
    let pool = load::make_pool(pool_len, 0x9e37_79b9_7f4a_7c15);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let probe_tool = match args.probe_tool.as_str() {
        "client" => "client",
        "wrk" => "wrk",
        _ if Command::new("wrk").arg("--version").output().is_ok() => "wrk",
        _ => "client",
    };
    let mut bench = Bench {
        args,
        rt,
        bin,
        tmp: tmp.path().to_path_buf(),
        pool,
        plan,
        figs: Figures::default(),
        probe_tool,
    };
    for r in 0..bench.args.runs {
        eprintln!("bench: run {}/{}", r + 1, bench.args.runs);
        bench.one_run(r)?;
    }
    bench.report();
    Ok(())
}

/// The plan of the `gib` scenario: one file as large as all files of the main plan.
fn gib_plan(plan: &Plan) -> Plan {
    Plan {
        files: 1,
        size: plan.bytes(),
        chunk: plan.chunk,
    }
}

/// Finds (and by default builds) the chunkd binary.
fn chunkd_binary(args: &Args) -> Result<PathBuf, String> {
    if let Some(b) = &args.server_bin {
        return Ok(b.clone());
    }
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    // <target>/<profile>/examples/bench
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .ok_or("cannot find the target directory")?;
    let bin = target.join("release").join("chunkd");
    if !args.no_build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args([
                "build",
                "--release",
                "--quiet",
                "--bin",
                "chunkd",
                "--manifest-path",
            ])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", target)
            .status()
            .map_err(|e| format!("cargo build: {e}"))?;
        if !st.success() {
            return Err("cargo build --release --bin chunkd failed".into());
        }
    }
    if !bin.exists() {
        return Err(format!(
            "{} not found: run `cargo build --release` or pass --server-bin",
            bin.display()
        ));
    }
    Ok(bin)
}

/// A scenario's temporary directory. On drop every file in it is truncated to zero bytes,
/// which frees its page cache for the next scenario, but no file is deleted until the whole
/// bench ends: ext4 skips recently deleted inodes when it allocates new ones, scanning past
/// them, and thousands of deletions between two scenarios would make the next one pay for it.
struct Scratch(PathBuf);

fn truncate_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => truncate_tree(&e.path()),
            Ok(t) if t.is_file() => {
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(e.path()) {
                    let _ = f.set_len(0);
                }
            }
            _ => {}
        }
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        truncate_tree(&self.0);
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn client_cpu() -> f64 {
    servers::cpu_seconds("/proc/self/stat")
}

impl Bench {
    fn on(&self, name: &str) -> bool {
        self.args.only.is_empty() || self.args.only.iter().any(|s| s == name)
    }

    fn deadline(&self) -> Duration {
        Duration::from_secs(self.args.timeout)
    }

    /// A fresh directory for one scenario, emptied when the scenario ends (declare it before
    /// the server, so that the server stops first): its page cache is freed for the next one.
    fn scratch(&self, name: &str, run: usize) -> Result<Scratch, String> {
        let d = self.tmp.join(format!("{name}-{run}"));
        std::fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        Ok(Scratch(d))
    }

    /// Writes and removes as many bytes as the largest phase, right before every measured
    /// upload and download phase and `dd`, so that each server starts from the same memory: freshly
    /// freed, not yet handed back to the host. On this VM, memory freed for a few seconds goes
    /// back to the host (free page reporting in 8 MiB blocks, and a DAMON `pageout` scheme), and
    /// the first touch of it afterwards costs several times a normal one (dd shows 0.5 GB/s the
    /// first time, 4-5 GB/s after). How much of it a phase meets depended on the phases before:
    /// rustus, which takes fresh memory for every chunk, ran at 1.5-2.2 GB/s (0.54-0.79
    /// CPU-s/GiB) on its own and at 0.5-0.7 GB/s (1.7-2.7 CPU-s/GiB) right after @tus/server
    /// (BENCHMARKS.md, round 13). Warming before each phase takes that history out of the
    /// comparison; it is outside the phase's clock and CPU counts.
    fn warm_page_cache(&self) -> Result<(), String> {
        use std::io::Write;
        let path = self.tmp.join("warm-up.bin");
        let mut f = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let piece = vec![0u8; 1 << 20];
        for _ in 0..self.plan.bytes().div_ceil(1 << 20) + 256 {
            f.write_all(&piece)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        drop(f);
        std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn one_run(&mut self, run: usize) -> Result<(), String> {
        if self.on("cipher") {
            let t = Duration::from_secs_f64(self.args.cipher_secs);
            let seal = baselines::seal_rate(t);
            let open = baselines::open_rate(t);
            let both = baselines::seal_rate_threads(t, 2);
            let small = baselines::seal_small_rate(t);
            let chain = baselines::cbc_one_chain_rate(t);
            eprintln!(
                "  cipher: seal {:.2} GB/s/core, open {:.2} GB/s/core, seal on 2 threads {:.2} GB/s, seal in {} B calls {:.2} GB/s/core, one cbc chain {:.2} GB/s",
                seal / 1e9,
                open / 1e9,
                both / 1e9,
                baselines::SMALL,
                small / 1e9,
                chain / 1e9
            );
            self.figs.add("cipher.seal_small_gbps", small / 1e9);
            self.figs.add("cipher.seal_gbps", seal / 1e9);
            self.figs.add("cipher.open_gbps", open / 1e9);
            self.figs.add("cipher.seal_2threads_gbps", both / 1e9);
            self.figs.add("cipher.cbc_one_chain_gbps", chain / 1e9);
        }
        if self.on("openssl") {
            let s = self.args.openssl_secs;
            match (
                baselines::openssl_speed(s, false),
                baselines::openssl_speed(s, true),
            ) {
                (Some(e), Some(d)) => {
                    eprintln!(
                        "  openssl aes-256-cbc (16 KiB): encrypt {:.2} GB/s, decrypt {:.2} GB/s",
                        e / 1e9,
                        d / 1e9
                    );
                    self.figs.add("openssl.enc_gbps", e / 1e9);
                    self.figs.add("openssl.dec_gbps", d / 1e9);
                }
                _ => eprintln!("  openssl speed: not available"),
            }
        }
        if self.on("sink") || self.on("source") || self.on("probe") {
            let dir = self.scratch("baseline", run)?;
            let server = servers::start_baseline(&dir)?;
            if self.on("sink") {
                let up = self.upload_phase(
                    &server,
                    "sink",
                    self.plan,
                    self.args.in_flight,
                    Wire::Octet,
                    false,
                )?;
                let _ = up;
            }
            if self.on("source") {
                let paths = vec![format!("/blob?len={}", self.plan.size); self.plan.files];
                self.download_phase(&server, "source", paths)?;
            }
            if self.on("probe") {
                self.probe_phase(&server, "hello", "/")?;
            }
        }
        if self.on("fast") || self.on("download") {
            let dir = self.scratch("fast", run)?;
            let server = servers::start_chunkd(&self.bin, &dir, "fast")?;
            let up = self.upload_phase(
                &server,
                "fast",
                self.plan,
                self.args.in_flight,
                Wire::Octet,
                true,
            )?;
            if self.on("download") {
                self.download_phase(&server, "download", up.urls.clone())?;
            }
            if !self.args.no_verify {
                // Every file back, hashed: a chunk stored in the wrong place fails here.
                let digests: Vec<[u8; 32]> = (0..self.plan.files)
                    .map(|f| Sha256::digest(&self.pool[self.plan.file_range(f)]).into())
                    .collect();
                self.rt.block_on(load::download(
                    server.addr,
                    up.urls.clone(),
                    Some(digests),
                    self.args.in_flight,
                    self.deadline(),
                ))?;
                eprintln!("  verified: every file's SHA-256 matches");
            }
        }
        if self.on("multipart") {
            let dir = self.scratch("multipart", run)?;
            let server = servers::start_chunkd(&self.bin, &dir, "fast")?;
            self.upload_phase(
                &server,
                "multipart",
                self.plan,
                self.args.in_flight,
                Wire::Multipart,
                true,
            )?;
        }
        if self.on("many") {
            let dir = self.scratch("many", run)?;
            let server = servers::start_chunkd(&self.bin, &dir, "fast")?;
            self.upload_phase(
                &server,
                "many",
                self.plan,
                self.args.many,
                Wire::Octet,
                true,
            )?;
        }
        if self.on("big") {
            let dir = self.scratch("big", run)?;
            let server = servers::start_chunkd(&self.bin, &dir, "fast")?;
            let plan = Plan {
                chunk: self.args.big_chunk,
                ..self.plan
            };
            self.upload_phase(&server, "big", plan, self.args.in_flight, Wire::Octet, true)?;
        }
        if self.on("gib") {
            let dir = self.scratch("gib", run)?;
            let server = servers::start_chunkd(&self.bin, &dir, "fast")?;
            let plan = gib_plan(&self.plan);
            self.upload_phase(&server, "gib", plan, self.args.in_flight, Wire::Octet, true)?;
        }
        if self.on("dd") {
            let dir = self.scratch("dd", run)?;
            let mb = self.plan.bytes().div_ceil(1 << 20);
            self.warm_page_cache()?;
            match baselines::dd_fdatasync(&dir, mb) {
                Some(r) => {
                    eprintln!("  dd conv=fdatasync: {:.0} MB/s", r / 1e6);
                    self.figs.add("dd.mbps", r / 1e6);
                }
                None => eprintln!("  dd: failed"),
            }
        }
        if self.on("safe") {
            let dir = self.scratch("safe", run)?;
            let server = servers::start_chunkd(&self.bin, &dir, "safe")?;
            self.upload_phase(
                &server,
                "safe",
                self.plan,
                self.args.in_flight,
                Wire::Octet,
                true,
            )?;
        }
        if self.on("tus") {
            match servers::tus_script() {
                None => eprintln!(
                    "  tus: skipped: `npm ci --prefix examples/bench/tus` installs @tus/server"
                ),
                Some(script) => {
                    let dir = self.scratch("tus", run)?;
                    let store = dir.join("store");
                    let server = servers::start_tus(&script, &store, &dir)?;
                    self.tus_phase(&server, "tus", "/files", &store)?;
                }
            }
        }
        if self.on("rustus") {
            match servers::rustus_binary(self.args.rustus_bin.as_deref()) {
                None => eprintln!(
                    "  rustus: skipped: no rustus binary (--rustus-bin, or `rustus` on the PATH)"
                ),
                Some(bin) => {
                    let dir = self.scratch("rustus", run)?;
                    let store = dir.join("store");
                    let server = servers::start_rustus(&bin, &store, &dir, self.plan.chunk)?;
                    self.tus_phase(&server, "rustus", "/files/", &store)?;
                }
            }
        }
        if self.on("probe") {
            let dir = self.scratch("probe", run)?;
            let server = servers::start_chunkd(&self.bin, &dir, "fast")?;
            // An active upload: chunk 1 of 2 is stored.
            let addr = server.addr;
            self.store_probe_chunk(addr)?;
            let q = |n: u64| {
                format!(
                    "/upload?resumableChunkNumber={n}&resumableChunkSize=65536&resumableCurrentChunkSize=65536&resumableTotalSize=131072&resumableType=application%2Foctet-stream&resumableIdentifier=probe-1&resumableFilename=probe.bin&resumableRelativePath=probe.bin&resumableTotalChunks=2"
                )
            };
            let present = self.rt.block_on(load::get_status(addr, &q(1)))?;
            let absent = self.rt.block_on(load::get_status(addr, &q(2)))?;
            if (present, absent) != (200, 204) {
                return Err(format!(
                    "probe set-up: chunk 1 answers {present}, chunk 2 answers {absent} (want 200, 204)"
                ));
            }
            self.probe_phase(&server, "probe_present", &q(1))?;
            self.probe_phase(&server, "probe_absent", &q(2))?;
        }
        Ok(())
    }

    /// Stores chunk 1 of the 2-chunk probe upload.
    fn store_probe_chunk(&self, addr: SocketAddr) -> Result<(), String> {
        let body = self.pool.slice(..65536);
        let head = "POST /upload?resumableChunkNumber=1&resumableChunkSize=65536&resumableCurrentChunkSize=65536&resumableTotalSize=131072&resumableType=application%2Foctet-stream&resumableIdentifier=probe-1&resumableFilename=probe.bin&resumableRelativePath=probe.bin&resumableTotalChunks=2 HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/octet-stream\r\n";
        let r = self
            .rt
            .block_on(async {
                client::Conn::new(addr)
                    .request(head, &[body], client::BodyMode::Keep)
                    .await
            })
            .map_err(|e| format!("probe set-up: {e}"))?;
        if r.status != 200 {
            return Err(format!(
                "probe set-up: status {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ));
        }
        Ok(())
    }

    fn upload_phase(
        &mut self,
        server: &Server,
        name: &str,
        plan: Plan,
        in_flight: usize,
        wire: Wire,
        chunkd: bool,
    ) -> Result<Upload, String> {
        let load = load::upload(
            server.addr,
            plan,
            self.pool.clone(),
            in_flight,
            wire,
            name,
            chunkd,
            self.deadline(),
        );
        self.measured_upload(server, name, load)
    }

    /// Runs one upload phase against `server`, and records and prints its figures as `name`.
    fn measured_upload(
        &mut self,
        server: &Server,
        name: &str,
        load: impl std::future::Future<Output = Result<Upload, String>>,
    ) -> Result<Upload, String> {
        self.warm_page_cache()?;
        let (cpu0, ccpu0) = (server.cpu_seconds(), client_cpu());
        let up = self
            .rt
            .block_on(load)
            .map_err(|e| format!("{name}: {e}\nserver log:\n{}", server.log_text()))?;
        let (cpu, ccpu) = (server.cpu_seconds() - cpu0, client_cpu() - ccpu0);
        let gib = up.bytes as f64 / (1u64 << 30) as f64;
        let rss = mib(server.peak_rss());
        let f = &mut self.figs;
        f.add(format!("{name}.mbps"), up.mbps());
        f.add(format!("{name}.p50_ms"), up.percentile(50.0));
        f.add(format!("{name}.p99_ms"), up.percentile(99.0));
        f.add(format!("{name}.max_ms"), up.percentile(100.0));
        f.add(
            format!("{name}.cpu_s_per_gib"),
            server_cpu_per_gib(cpu, gib),
        );
        f.add(format!("{name}.client_cpu_s_per_gib"), ccpu / gib);
        f.add(format!("{name}.peak_rss_mib"), rss);
        let mut note = String::new();
        if !up.completions.is_empty() {
            let mut c = up.completions.clone();
            c.sort_by(f64::total_cmp);
            let (med, max) = (load::percentile(&c, 50.0), load::percentile(&c, 100.0));
            f.add(format!("{name}.completing_med_ms"), med);
            f.add(format!("{name}.completing_max_ms"), max);
            f.add(
                format!("{name}.completing_max_over_p50"),
                max / up.percentile(50.0),
            );
            note = format!(", completing chunk median {med:.1} ms max {max:.1} ms");
        }
        eprintln!(
            "  {name}: {:.0} MB/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{note}, server {:.2} CPU-s/GiB, peak RSS {rss:.1} MiB, client {:.2} CPU-s/GiB",
            up.mbps(),
            up.percentile(50.0),
            up.percentile(99.0),
            up.percentile(100.0),
            cpu / gib,
            ccpu / gib
        );
        Ok(up)
    }

    /// Uploads the plan to a tus peer at `path`, then (unless `--no-verify`) checks that every
    /// file it stored under `store`, named by the last part of its upload URL, is what was sent.
    fn tus_phase(
        &mut self,
        server: &Server,
        name: &str,
        path: &str,
        store: &Path,
    ) -> Result<(), String> {
        let mut paths = Vec::new();
        let load = load::tus_upload(
            server.addr,
            path,
            self.plan,
            self.pool.clone(),
            self.args.in_flight,
            self.deadline(),
        );
        let load = async {
            let (up, p) = load.await?;
            paths = p;
            Ok(up)
        };
        self.measured_upload(server, name, load)?;
        if !self.args.no_verify {
            for (f, p) in paths.iter().enumerate() {
                let id = p.rsplit('/').next().unwrap_or_default();
                let bytes = std::fs::read(store.join(id))
                    .map_err(|e| format!("{name}: file {f} ({id}): {e}"))?;
                if Sha256::digest(&bytes) != Sha256::digest(&self.pool[self.plan.file_range(f)]) {
                    return Err(format!(
                        "{name}: file {f} ({id}) differs from what was sent"
                    ));
                }
            }
            eprintln!("  verified: every file {name} stored matches");
        }
        Ok(())
    }

    fn download_phase(
        &mut self,
        server: &Server,
        name: &str,
        paths: Vec<String>,
    ) -> Result<(), String> {
        self.warm_page_cache()?;
        let reset = server.reset_peak_rss();
        let (cpu0, ccpu0) = (server.cpu_seconds(), client_cpu());
        let (bytes, secs) = self
            .rt
            .block_on(load::download(
                server.addr,
                paths,
                None,
                self.args.in_flight,
                self.deadline(),
            ))
            .map_err(|e| format!("{name}: {e}\nserver log:\n{}", server.log_text()))?;
        let (cpu, ccpu) = (server.cpu_seconds() - cpu0, client_cpu() - ccpu0);
        let gib = bytes as f64 / (1u64 << 30) as f64;
        let mbps = bytes as f64 / secs / 1e6;
        self.figs.add(format!("{name}.mbps"), mbps);
        self.figs.add(
            format!("{name}.cpu_s_per_gib"),
            server_cpu_per_gib(cpu, gib),
        );
        self.figs
            .add(format!("{name}.client_cpu_s_per_gib"), ccpu / gib);
        // Without the reset, the figure would be the upload's peak before it.
        let rss = reset.then(|| mib(server.peak_rss()));
        if let Some(rss) = rss {
            self.figs.add(format!("{name}.peak_rss_mib"), rss);
        }
        eprintln!(
            "  {name}: {mbps:.0} MB/s, server {:.2} CPU-s/GiB, client {:.2} CPU-s/GiB, server peak RSS {}",
            cpu / gib,
            ccpu / gib,
            rss.map_or("unknown".to_string(), |r| format!("{r:.1} MiB"))
        );
        Ok(())
    }

    fn probe_phase(&mut self, server: &Server, name: &str, path: &str) -> Result<(), String> {
        let (conns, secs) = (self.args.probe_conns, self.args.probe_secs);
        let cpu0 = server.cpu_seconds();
        let start = std::time::Instant::now();
        let rps = match self.probe_tool {
            "wrk" => load::wrk_rate(server.addr, path, conns, secs)
                .ok_or_else(|| format!("{name}: wrk failed"))?,
            _ => self
                .rt
                .block_on(load::probe_rate(server.addr, path, conns, secs))?,
        };
        let elapsed = start.elapsed().as_secs_f64();
        let cpu_us = (server.cpu_seconds() - cpu0) / (rps * elapsed) * 1e6;
        self.figs.add(format!("{name}.rps"), rps);
        self.figs
            .add(format!("{name}.server_cpu_us_per_req"), cpu_us);
        eprintln!(
            "  {name}: {rps:.0} requests/s ({}), server {cpu_us:.1} CPU-µs per request",
            self.probe_tool
        );
        Ok(())
    }

    fn report(&self) {
        let f = &self.figs;
        let m = |k: &str| f.median(k);
        let fmt = |v: Option<f64>, prec: usize| match v {
            Some(x) => format!("{x:.prec$}"),
            None => "-".into(),
        };
        let p = &self.plan;
        println!();
        println!(
            "chunkd bench: {} files x {} MiB, {} KiB chunks, {} in flight; medians of {} run(s)",
            p.files,
            mib(p.size),
            p.chunk >> 10,
            self.args.in_flight,
            self.args.runs
        );
        println!();
        println!(
            "| upload | MB/s (min-max) | p50 ms | p99 ms | max ms | completing chunk ms (med / max) | server CPU-s/GiB | server peak RSS MiB | client CPU-s/GiB |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        let uploads = [
            ("sink", "discard sink, octet"),
            ("fast", "chunkd fast, octet"),
            ("multipart", "chunkd fast, multipart"),
            ("many", "chunkd fast, octet, many in flight"),
            ("big", "chunkd fast, octet, big chunks"),
            ("gib", "chunkd fast, octet, one file"),
            ("safe", "chunkd safe, octet"),
            ("tus", "@tus/server + file-store (no encryption), tus"),
            ("rustus", "rustus 0.5.10, file storage (no encryption), tus"),
        ];
        for (k, label) in uploads {
            if m(&format!("{k}.mbps")).is_none() {
                continue;
            }
            let range = f
                .range(&format!("{k}.mbps"))
                .map(|(a, b)| format!(" ({a:.0}-{b:.0})"))
                .unwrap_or_default();
            let comp = match (
                m(&format!("{k}.completing_med_ms")),
                m(&format!("{k}.completing_max_ms")),
            ) {
                (Some(a), Some(b)) => format!("{a:.1} / {b:.1}"),
                _ => "-".into(),
            };
            println!(
                "| {label} | {}{range} | {} | {} | {} | {comp} | {} | {} | {} |",
                fmt(m(&format!("{k}.mbps")), 0),
                fmt(m(&format!("{k}.p50_ms")), 1),
                fmt(m(&format!("{k}.p99_ms")), 1),
                fmt(m(&format!("{k}.max_ms")), 1),
                fmt(m(&format!("{k}.cpu_s_per_gib")), 2),
                fmt(m(&format!("{k}.peak_rss_mib")), 1),
                fmt(m(&format!("{k}.client_cpu_s_per_gib")), 2),
            );
        }
        println!();
        println!("| reference | median | (min-max) |");
        println!("|---|---|---|");
        let refs = [
            ("cipher.seal_gbps", "chunkd two-layer seal, GB/s per core"),
            ("cipher.open_gbps", "chunkd two-layer open, GB/s per core"),
            (
                "cipher.seal_2threads_gbps",
                "chunkd two-layer seal, GB/s on 2 threads",
            ),
            (
                "cipher.seal_small_gbps",
                "chunkd two-layer seal in 100 kB calls (a small file), GB/s per core",
            ),
            (
                "cipher.cbc_one_chain_gbps",
                "cbc crate, one chain, one layer, GB/s",
            ),
            (
                "openssl.enc_gbps",
                "openssl aes-256-cbc encrypt (16 KiB), GB/s",
            ),
            (
                "openssl.dec_gbps",
                "openssl aes-256-cbc decrypt (16 KiB), GB/s",
            ),
            ("download.mbps", "chunkd download (decrypt + send), MB/s"),
            (
                "download.cpu_s_per_gib",
                "chunkd download, server CPU-s/GiB",
            ),
            (
                "download.peak_rss_mib",
                "chunkd download, server peak RSS MiB (of the phase)",
            ),
            ("source.mbps", "source (hyper, bytes from memory), MB/s"),
            ("dd.mbps", "dd conv=fdatasync, MB/s"),
            ("hello.rps", "hyper hello-world, requests/s"),
            (
                "probe_present.rps",
                "chunkd probe, chunk present (200), requests/s",
            ),
            (
                "probe_absent.rps",
                "chunkd probe, chunk absent (204), requests/s",
            ),
            (
                "hello.server_cpu_us_per_req",
                "hello-world, server CPU-µs per request",
            ),
            (
                "probe_present.server_cpu_us_per_req",
                "probe (200), server CPU-µs per request",
            ),
            (
                "probe_absent.server_cpu_us_per_req",
                "probe (204), server CPU-µs per request",
            ),
        ];
        for (k, label) in refs {
            if let (Some(v), Some((a, b))) = (m(k), f.range(k)) {
                let prec = if v < 100.0 { 2 } else { 0 };
                println!("| {label} | {v:.prec$} | ({a:.prec$}-{b:.prec$}) |");
            }
        }
        // Targets of issue 6: (label, value, target, higher is better).
        let ratio = |a: &str, b: &str| Some(m(a)? / m(b)?);
        let targets: Vec<(&str, Option<f64>, f64, bool)> = vec![
            (
                "two-layer seal / openssl single-layer",
                ratio("cipher.seal_gbps", "openssl.enc_gbps"),
                2.0,
                true,
            ),
            (
                "fast upload / sink",
                ratio("fast.mbps", "sink.mbps"),
                0.5,
                true,
            ),
            (
                "multipart upload / sink",
                ratio("multipart.mbps", "sink.mbps"),
                0.5,
                true,
            ),
            (
                "safe upload / dd fdatasync",
                ratio("safe.mbps", "dd.mbps"),
                0.7,
                true,
            ),
            (
                "fast upload, server CPU-s/GiB",
                m("fast.cpu_s_per_gib"),
                0.8,
                false,
            ),
            (
                "one file of files x size (1 GiB): completing chunk / p50",
                m("gib.completing_max_over_p50"),
                2.0,
                false,
            ),
            (
                "fast: completing chunk (max) / p50",
                m("fast.completing_max_over_p50"),
                2.0,
                false,
            ),
            (
                "peak RSS MiB, 3 in flight",
                m("fast.peak_rss_mib"),
                32.0,
                false,
            ),
            (
                "peak RSS MiB, many in flight",
                m("many.peak_rss_mib"),
                96.0,
                false,
            ),
            (
                "peak RSS MiB, big chunks",
                m("big.peak_rss_mib"),
                32.0,
                false,
            ),
            (
                "probe (200) / hello-world",
                ratio("probe_present.rps", "hello.rps"),
                0.7,
                true,
            ),
            (
                "probe (204) / hello-world",
                ratio("probe_absent.rps", "hello.rps"),
                0.7,
                true,
            ),
            (
                "fast upload / @tus/server",
                ratio("fast.mbps", "tus.mbps"),
                4.0,
                true,
            ),
            (
                "fast upload / rustus",
                ratio("fast.mbps", "rustus.mbps"),
                3.0,
                true,
            ),
            (
                "download / sink",
                ratio("download.mbps", "sink.mbps"),
                0.5,
                true,
            ),
            (
                "download / source",
                ratio("download.mbps", "source.mbps"),
                0.5,
                true,
            ),
        ];
        println!();
        println!("| target | measured | goal | met |");
        println!("|---|---|---|---|");
        let mut json_targets = serde_json::Map::new();
        for (label, v, goal, higher) in &targets {
            let Some(v) = v else { continue };
            let met = if *higher { v >= goal } else { v <= goal };
            let op = if *higher { ">=" } else { "<=" };
            println!(
                "| {label} | {v:.2} | {op} {goal} | {} |",
                if met { "yes" } else { "NO" }
            );
            json_targets.insert(
                label.to_string(),
                serde_json::json!({"value": v, "goal": goal, "higher_is_better": higher, "met": met}),
            );
        }
        let medians: serde_json::Map<String, serde_json::Value> =
            f.0.keys()
                .filter_map(|k| Some((k.clone(), serde_json::json!(m(k)?))))
                .collect();
        let json = serde_json::json!({
            "bench": "chunkd",
            "runs": self.args.runs,
            "files": p.files,
            "file_size": p.size,
            "chunk_size": p.chunk,
            "in_flight": self.args.in_flight,
            "many_in_flight": self.args.many,
            "big_chunk": self.args.big_chunk,
            "probe_tool": self.probe_tool,
            "probe_conns": self.args.probe_conns,
            "client_threads": self.args.client_threads,
            "medians": medians,
            "targets": json_targets,
            "raw": f.0,
        });
        println!();
        println!("{json}");
    }
}
