//! Command-line flags. Every flag can also come from an environment variable `CHUNKD_*`, and its
//! doc comment is what `--help` prints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// chunkd: a resumable-upload server for Resumable.js, Flow.js and the Twake Files API, keeping
/// every byte encrypted at rest.
#[derive(Parser, Debug, Clone)]
#[command(name = "chunkd", version, about, long_about = None)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// With no command, chunkd serves.
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

/// What chunkd does besides serving.
#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Mints a bearer token (HS256 JWT) for the Files API and `--require-auth`, signed with the
    /// same secret the server uses, and prints it on stdout.
    Token(TokenArgs),
    /// Checks a data directory while the server is stopped: every complete file decrypts to its
    /// recorded length and hashes, every recorded chunk has its bytes, no bytes lack a row.
    /// Exits 1 if it finds a problem. `--repair` fixes what is safe to fix.
    Verify(VerifyArgs),
}

/// What `chunkd verify` checks.
#[derive(Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Data directory to check.
    #[arg(long, env = "CHUNKD_DATA", default_value = "./chunkd-data")]
    pub data: PathBuf,
    /// Global key file. Default: `<data>/chunkd.key`.
    #[arg(long, env = "CHUNKD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Fix what is safe to fix: remove bytes no row owns, and forget chunks of incomplete
    /// uploads whose bytes are missing or damaged (clients send them again). Complete files are
    /// never changed; their damage is only reported.
    #[arg(long)]
    pub repair: bool,
}

/// The claims of a token to mint.
#[derive(Args, Debug, Clone)]
pub struct TokenArgs {
    /// The principal: a user id, or an application id.
    #[arg(long)]
    pub sub: String,
    /// A company the principal belongs to; repeat for several.
    #[arg(long = "company", required = true)]
    pub companies: Vec<String>,
    /// Makes the token an application's (`application_id` claim): applications may overwrite
    /// complete files.
    #[arg(long)]
    pub application: Option<String>,
    /// Lifetime: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// Data directory whose JWT secret signs the token (when no other secret is given).
    #[arg(long, env = "CHUNKD_DATA", default_value = "./chunkd-data")]
    pub data: PathBuf,
    #[command(flatten)]
    pub secret: JwtSecret,
}

/// Everything a running server needs to know.
#[derive(Args, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    pub net: NetConfig,
    #[command(flatten)]
    pub storage: StorageConfig,
    #[command(flatten)]
    pub limits: Limits,
    #[command(flatten)]
    pub auth: AuthConfig,
}

/// Where the HS256 secret that signs tokens comes from.
#[derive(Args, Debug, Clone)]
pub struct JwtSecret {
    /// The HS256 secret itself, at least 32 bytes. Give it through the environment: a flag's
    /// value is visible to every local user in the process list.
    #[arg(
        long = "jwt-secret",
        env = "CHUNKD_JWT_SECRET",
        hide = true,
        hide_env_values = true
    )]
    pub value: Option<String>,

    /// File holding the HS256 secret (mode 0600). Default: `<data>/jwt.secret`, created with a
    /// random secret on first start when no secret is given.
    #[arg(long = "jwt-secret-file", env = "CHUNKD_JWT_SECRET_FILE")]
    pub file: Option<PathBuf>,
}

/// Who may do what.
#[derive(Args, Debug, Clone)]
pub struct AuthConfig {
    #[command(flatten)]
    pub secret: JwtSecret,

    /// Require a bearer token on the chunk endpoint (probes, chunks, status) and on `/files/`;
    /// uploads are then private to the token's principal. The Files API always requires one.
    #[arg(long, env = "CHUNKD_REQUIRE_AUTH")]
    pub require_auth: bool,

    /// Serve downloads and thumbnails of the Files API to anyone who has the URL, as the Node
    /// server did. By default they need a token, or a signed URL from the file's resource.
    #[arg(long, env = "CHUNKD_PUBLIC_DOWNLOADS")]
    pub public_downloads: bool,

    /// Lifetime of the signed download and thumbnail URLs in resources, in seconds.
    #[arg(long, env = "CHUNKD_URL_TTL", default_value = "3600", value_parser = parse_secs)]
    pub url_ttl: Duration,
}

impl JwtSecret {
    /// The secret file actually used.
    pub fn path(&self, data: &std::path::Path) -> PathBuf {
        self.file.clone().unwrap_or_else(|| data.join("jwt.secret"))
    }
}

/// Where and how chunkd answers.
#[derive(Args, Debug, Clone)]
pub struct NetConfig {
    /// Address to listen on, IP:PORT. Port 0 picks a free port; the real one is printed.
    #[arg(long, env = "CHUNKD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Path of the chunk endpoint (GET probes, POST chunks); `<path>/status` gives an upload's
    /// state. Must start with `/` and may not be `/`, `/files` or under it.
    #[arg(long, env = "CHUNKD_UPLOAD_PATH", default_value = "/upload", value_parser = parse_upload_path)]
    pub upload_path: String,

    /// Origins allowed to call chunkd from a browser page (CORS), comma-separated, such as
    /// `https://app.example.com`. `*` allows any origin, without credentials. By default only
    /// pages served by chunkd itself (same origin) may upload.
    #[arg(
        long = "cors-origin",
        env = "CHUNKD_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Directory of static files served at `/` (the demo page).
    #[arg(long, env = "CHUNKD_STATIC_DIR", default_value = "static")]
    pub static_dir: PathBuf,

    /// Most connections served at once; more wait in the kernel's accept queue.
    #[arg(long, env = "CHUNKD_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Time a client has to send its request headers, in seconds (against slow clients).
    #[arg(long, env = "CHUNKD_HEADER_TIMEOUT", default_value = "30", value_parser = parse_secs)]
    pub header_timeout: Duration,

    /// Longest wait, in seconds, for the next byte of a request body (against clients that
    /// stall mid-chunk). A chunk cut off so gets 408 and leaves nothing stored.
    #[arg(long, env = "CHUNKD_BODY_TIMEOUT", default_value = "30", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// On SIGTERM or SIGINT, time in seconds that requests in flight get to finish.
    #[arg(long, env = "CHUNKD_SHUTDOWN_GRACE", default_value = "30", value_parser = parse_secs)]
    pub shutdown_grace: Duration,
}

/// Where the bytes live and how hard chunkd works to keep them.
#[derive(Args, Debug, Clone)]
pub struct StorageConfig {
    /// Data directory: holds the SQLite index, the encrypted spool and (by default) the key file.
    #[arg(long, env = "CHUNKD_DATA", default_value = "./chunkd-data")]
    pub data: PathBuf,

    /// Global key file: 96 hex digits (32-byte key, 16-byte IV), mode 0600. Created on first
    /// start if absent. Default: `<data>/chunkd.key`. Keep it apart from the data directory to
    /// make a stolen data directory useless.
    #[arg(long, env = "CHUNKD_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// `safe`: a chunk is acknowledged only once its bytes and its index row are on stable
    /// storage (fsync), so it survives power loss. `fast`: leaves flushing to the OS; a crash of
    /// chunkd loses nothing, but a power loss may lose recently acknowledged chunks.
    #[arg(long, env = "CHUNKD_DURABILITY", value_enum, default_value_t = Durability::Safe)]
    pub durability: Durability,
}

/// Size limits.
#[derive(Args, Debug, Clone)]
pub struct Limits {
    /// Largest file accepted (suffixes K, M, G, T for powers of 1000, KiB, MiB, GiB, TiB).
    #[arg(long, env = "CHUNKD_MAX_FILE_SIZE", default_value = "64GiB", value_parser = parse_file_size)]
    pub max_file_size: u64,

    /// Most bytes the spool may hold (encrypted chunks and thumbnails); a chunk that would pass
    /// it gets 503 with Retry-After, like a full disk. No limit by default.
    #[arg(long, env = "CHUNKD_MAX_SPOOL_BYTES", value_parser = parse_size)]
    pub max_spool_bytes: Option<u64>,

    /// Incomplete uploads untouched for this long are removed, bytes and rows (seconds, or a
    /// number with s, m, h or d).
    #[arg(long, env = "CHUNKD_EXPIRE_AFTER", default_value = "24h", value_parser = parse_duration)]
    pub expire_after: Duration,

    /// How often abandoned uploads are looked for (seconds, or a number with s, m, h or d).
    /// Default: a quarter of `--expire-after`, at most 10 minutes.
    #[arg(long, env = "CHUNKD_SWEEP_INTERVAL", value_parser = parse_duration)]
    pub sweep_interval: Option<Duration>,

    /// Largest chunk accepted. With the default cutting rule the last chunk holds up to twice
    /// the chunk size, so the default allows chunks of 100 MB and last chunks just under 200 MB.
    #[arg(long, env = "CHUNKD_MAX_CHUNK_SIZE", default_value = "256MiB", value_parser = parse_size)]
    pub max_chunk_size: u64,

    /// Most incomplete uploads one principal may have at a time: the token's principal with a
    /// token, else the client's IP address (an IPv6 client's /64). Starting one more gets 429
    /// with Retry-After; chunks of uploads already started always go on. 0: no limit.
    #[arg(long, env = "CHUNKD_MAX_OPEN_UPLOADS", default_value_t = 1000)]
    pub max_open_uploads: u64,
}

impl StorageConfig {
    /// The key file actually used.
    pub fn key_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data.join("chunkd.key"))
    }
}

/// How hard chunkd works to keep acknowledged chunks across a power loss.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Safe,
    Fast,
}

impl Config {
    /// A configuration for tests and embedding: everything at its default, data in `data`.
    pub fn for_data_dir(data: impl Into<PathBuf>) -> Self {
        let mut cli = Cli::parse_from(["chunkd"]);
        cli.config.storage.data = data.into();
        cli.config.net.listen = "127.0.0.1:0".parse().unwrap();
        cli.config
    }
}

fn parse_upload_path(s: &str) -> Result<String, String> {
    let ok = s.starts_with('/')
        && s.len() > 1
        && !s.ends_with('/')
        && s != "/files"
        && !s.starts_with("/files/")
        && !s.starts_with("/internal/")
        && !crate::ops::PATHS.contains(&s)
        && !s.contains("//")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(
            "must look like /upload: start with /, not end with /, not be / or under /files or \
             /internal, not be /healthz, /readyz or /metrics, \
             and use only letters, digits and - _ . ~"
                .into(),
        )
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("`{s}` is not a number of seconds"))
}

/// Parses a duration: `90` (seconds), `90s`, `15m`, `1h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 90s, 15m, 1h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "`{s}` is not a duration such as 90s, 15m, 1h or 7d"
            ));
        }
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{s}` is out of range"))
}

/// A file size limit: a size the index can store (SQLite integers are signed 64-bit), so that no
/// accepted file's size can wrap.
fn parse_file_size(s: &str) -> Result<u64, String> {
    parse_size(s).and_then(|v| {
        if v > i64::MAX as u64 {
            Err(format!(
                "`{s}` is out of range (at most {} bytes)",
                i64::MAX
            ))
        } else {
            Ok(v)
        }
    })
}

/// Parses `1048576`, `100MB`, `64GiB`, `1.5G`...
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(format!("unknown size unit in `{s}`")),
    };
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a size"))?;
    let v = n * mult as f64;
    if !(1.0..=u64::MAX as f64).contains(&v) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(v as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_paths() {
        assert_eq!(parse_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("12345").unwrap(), 12345);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("0").is_err());
        assert_eq!(parse_file_size("64GiB").unwrap(), 64 << 30);
        assert_eq!(
            parse_file_size("8000000T").unwrap(),
            8_000_000_000_000_000_000
        );
        assert!(parse_file_size("9300000T").is_err());
        assert!(parse_file_size("18446744073709551615").is_err());
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("-1h").is_err());
        assert!(parse_upload_path("/upload").is_ok());
        for bad in [
            "/",
            "upload",
            "/upload/",
            "/files",
            "/files/x",
            "/a//b",
            "/a?b",
            "/internal/x",
            "/metrics",
            "/healthz",
        ] {
            assert!(parse_upload_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_safe() {
        let c = Config::for_data_dir("/tmp/x");
        assert_eq!(c.storage.durability, Durability::Safe);
        assert!(c.net.cors_origins.is_empty());
        assert!(c.limits.max_chunk_size >= 2 * 100_000_000);
    }
}
