//! Two layers of AES-256-CBC at rest: a per-file key under a global key.
//!
//! # On-disk format (version 1)
//!
//! * **Global key file**: 96 hex digits (32-byte key `Kg`, then 16-byte IV `IVg`), optionally
//!   followed by a newline. Mode 0600; chunkd refuses a file other users can read.
//! * **Per-file keys**: 32 random bytes `Kf` and 16 random bytes `IVf` per upload, from the
//!   system CSPRNG. The index stores them wrapped: `W = wIV || AES-256-CBC(Kg, wIV, Kf || IVf)`,
//!   64 bytes, where `wIV` is 16 fresh random bytes and no padding is used (48 = 3 blocks).
//! * **Chunks**: each chunk is a region of its upload's data file, from byte `pos` (kept in the
//!   index; [`crate::store::Spool`]). Its plaintext is PKCS#7-padded as a whole (the inner layer
//!   pads: 1 to 16 bytes, so a chunk of `L` bytes takes `L - L % 16 + 16` bytes), then cut into
//!   segments of [`SEGMENT`] bytes (the last one may be shorter). A byte at plaintext offset
//!   `o` in the chunk is at `pos + o` in the data file.
//! * **Segments**: segment `s` of chunk `n` (1-based) written with the 64-bit random `nonce`
//!   (fresh for every write of a chunk, kept in the index) has the tweak
//!   `T = nonce (8 bytes BE) || n (4 bytes BE) || s (4 bytes BE)`, and is encrypted twice:
//!   * inner: AES-256-CBC with key `Kf`, IV `AES-256-ECB(Kf, IVf ^ T)`;
//!   * outer (no padding): AES-256-CBC with key `Kg`, IV `AES-256-ECB(Kg, IVg ^ IVf ^ T)`.
//!
//! Every segment is an independent CBC chain, so many segments are encrypted side by side (the
//! AES instructions pipeline several independent blocks), both layers run per block in one
//! pass, and a Range read starts at any segment. The tweak never repeats under one key: `n` and
//! `s` differ between segments of a file, the nonce differs between two writes of a chunk, and
//! `IVf` (random per file) separates files under the shared `Kg`. README.md shows the `openssl`
//! commands that decrypt a segment from this description alone.
//!
//! On x86-64 with AES-NI, segments are sealed and opened by `ni`, a small assembly module and
//! chunkd's only `unsafe` code, about 1.4-1.7 times as fast as the same lockstep through the
//! `aes` crate's backends (BENCHMARKS.md, round 6), and faster again on 256-bit registers where
//! the CPU has VAES (round 7); elsewhere they take the `aes` crate's path. Every path gives the
//! same bytes, which the tests check.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use aes::Aes256;
use aes::cipher::consts::U16;
use aes::cipher::{
    Array, BlockCipherDecBackend, BlockCipherDecClosure, BlockCipherDecrypt, BlockCipherEncBackend,
    BlockCipherEncClosure, BlockCipherEncrypt, BlockSizeUser, KeyInit, ParBlocks,
};
use ring::rand::{SecureRandom, SystemRandom};

#[cfg(target_arch = "x86_64")]
mod ni;

/// Bytes in one segment, the unit of one CBC chain. Small enough that a batch of segments in
/// flight stays in a few hundred KiB, large enough that the per-segment IV costs nothing.
pub const SEGMENT: usize = 16 * 1024;
/// The AES block size.
pub const BLOCK: usize = 16;
/// How many segments are encrypted side by side: the depth of the AES pipeline.
const LANES: usize = 8;

type Block = Array<u8, U16>;

/// Fills `buf` from the system CSPRNG.
pub fn random_bytes(buf: &mut [u8]) {
    SystemRandom::new()
        .fill(buf)
        .expect("the system random generator failed");
}

/// A random 64-bit value, for chunk write nonces.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    random_bytes(&mut b);
    u64::from_be_bytes(b)
}

/// The size on disk of a chunk of `len` plaintext bytes: padded to the next whole block.
pub fn sealed_len(len: u64) -> u64 {
    len - len % BLOCK as u64 + BLOCK as u64
}

fn xor16(a: &[u8; 16], b: &[u8; 16]) -> [u8; 16] {
    std::array::from_fn(|i| a[i] ^ b[i])
}

fn tweak(nonce: u64, chunk: u32, segment: u32) -> [u8; 16] {
    let mut t = [0u8; 16];
    t[..8].copy_from_slice(&nonce.to_be_bytes());
    t[8..12].copy_from_slice(&chunk.to_be_bytes());
    t[12..].copy_from_slice(&segment.to_be_bytes());
    t
}

/// The global key and IV, read from the key file. Never printed: `Debug` shows nothing.
pub struct GlobalKey {
    cipher: Aes256,
    /// The cipher's round keys for AES-NI, where the CPU has it.
    #[cfg(target_arch = "x86_64")]
    ni: Option<ni::Keys>,
    iv: [u8; 16],
    /// HMAC of a fixed label under the key: lets the index recognise the key it was made with.
    check: String,
}

impl std::fmt::Debug for GlobalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GlobalKey(..)")
    }
}

impl GlobalKey {
    /// Builds the key from its 48 raw bytes (key then IV).
    pub fn from_bytes(raw: &[u8; 48]) -> Self {
        let cipher = Aes256::new_from_slice(&raw[..32]).expect("32-byte key");
        let iv: [u8; 16] = raw[32..].try_into().expect("16-byte iv");
        let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &raw[..]);
        let tag = ring::hmac::sign(&hmac_key, b"chunkd key check v1");
        let check = hex(&tag.as_ref()[..16]);
        GlobalKey {
            cipher,
            #[cfg(target_arch = "x86_64")]
            ni: ni::Keys::new(raw[..32].try_into().expect("32-byte key")),
            iv,
            check,
        }
    }

    /// Reads the key file, or creates it (mode 0600, fresh random bytes) if it does not exist.
    /// Refuses a file of the wrong length or one that group or others may access.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        match fs::metadata(path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(io::Error::other(format!(
                        "key file {} has mode {mode:04o}: it must be readable by its owner only \
                         (run `chmod 600 {}`)",
                        path.display(),
                        path.display()
                    )));
                }
                let text = fs::read_to_string(path).map_err(|e| {
                    io::Error::other(format!("cannot read key file {}: {e}", path.display()))
                })?;
                let raw =
                    parse_hex::<48>(text.trim_end_matches(['\n', '\r'])).ok_or_else(|| {
                        io::Error::other(format!(
                            "key file {} must hold exactly 96 hex digits (a 32-byte key and a \
                         16-byte IV), e.g. from `openssl rand -hex 48`",
                            path.display()
                        ))
                    })?;
                Ok(Self::from_bytes(&raw))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut raw = [0u8; 48];
                random_bytes(&mut raw);
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    fs::create_dir_all(dir)?;
                }
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(|e| {
                        io::Error::other(format!("cannot create key file {}: {e}", path.display()))
                    })?;
                f.write_all(format!("{}\n", hex(&raw)).as_bytes())?;
                f.sync_all()?;
                tracing::info!(path = %path.display(), "created a new global key file");
                Ok(Self::from_bytes(&raw))
            }
            Err(e) => Err(io::Error::other(format!(
                "cannot read key file {}: {e}",
                path.display()
            ))),
        }
    }

    /// A value that identifies this key without revealing it, kept in the index.
    pub fn check_value(&self) -> &str {
        &self.check
    }

    /// Wraps a file's keys for storage in the index.
    pub fn wrap(&self, keys: &FileKeys) -> Vec<u8> {
        let mut wiv = [0u8; 16];
        random_bytes(&mut wiv);
        let mut blocks = [Block::default(); 3];
        let mut plain = [0u8; 48];
        plain[..32].copy_from_slice(&keys.key);
        plain[32..].copy_from_slice(&keys.iv);
        let mut prev = wiv;
        for (i, b) in blocks.iter_mut().enumerate() {
            let x = xor16(plain[i * 16..][..16].try_into().unwrap(), &prev);
            *b = Block::from(x);
            self.cipher.encrypt_block(b);
            prev = (*b).into();
        }
        let mut out = wiv.to_vec();
        for b in &blocks {
            out.extend_from_slice(b);
        }
        out
    }

    /// Unwraps keys stored by [`GlobalKey::wrap`].
    pub fn unwrap(&self, blob: &[u8]) -> Option<FileKeys> {
        if blob.len() != 64 {
            return None;
        }
        let mut buf = [0u8; 48];
        let mut prev: [u8; 16] = blob[..16].try_into().ok()?;
        for (i, sealed) in blob[16..].chunks_exact(16).enumerate() {
            let sealed: [u8; 16] = sealed.try_into().ok()?;
            let mut b = Block::from(sealed);
            self.cipher.decrypt_block(&mut b);
            buf[i * 16..][..16].copy_from_slice(&xor16(&b.into(), &prev));
            prev = sealed;
        }
        Some(FileKeys {
            key: buf[..32].try_into().ok()?,
            iv: buf[32..].try_into().ok()?,
        })
    }

    /// The cipher of a file, from its wrapped keys; `None` if they are not a wrapped pair.
    pub fn file_cipher(&self, wrapped: &[u8]) -> Option<FileCipher> {
        Some(FileCipher::new(self, &self.unwrap(wrapped)?))
    }
}

/// A file's own key and IV, the inner layer. Never printed.
#[derive(Clone)]
pub struct FileKeys {
    key: [u8; 32],
    iv: [u8; 16],
}

impl std::fmt::Debug for FileKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKeys(..)")
    }
}

impl FileKeys {
    /// Fresh random keys for a new upload.
    pub fn generate() -> Self {
        let mut raw = [0u8; 48];
        random_bytes(&mut raw);
        FileKeys {
            key: raw[..32].try_into().unwrap(),
            iv: raw[32..].try_into().unwrap(),
        }
    }
}

/// Both layers of one file, ready to seal and open its segments.
pub struct FileCipher {
    inner: Aes256,
    inner_iv: [u8; 16],
    outer: Aes256,
    /// `IVg ^ IVf`: the outer IV base, distinct per file.
    outer_iv: [u8; 16],
    /// Both layers' round keys for AES-NI (outer, inner), where the CPU has it.
    #[cfg(target_arch = "x86_64")]
    ni: Option<(ni::Keys, ni::Keys)>,
}

impl FileCipher {
    pub fn new(global: &GlobalKey, keys: &FileKeys) -> Self {
        FileCipher {
            inner: Aes256::new_from_slice(&keys.key).expect("32-byte key"),
            inner_iv: keys.iv,
            outer: global.cipher.clone(),
            outer_iv: xor16(&global.iv, &keys.iv),
            #[cfg(target_arch = "x86_64")]
            ni: global.ni.zip(ni::Keys::new(&keys.key)),
        }
    }

    /// The inner and outer IVs of one segment.
    fn segment_ivs(&self, nonce: u64, chunk: u32, segment: u32) -> ([u8; 16], [u8; 16]) {
        let t = tweak(nonce, chunk, segment);
        let mut a = Block::from(xor16(&self.inner_iv, &t));
        self.inner.encrypt_block(&mut a);
        let mut b = Block::from(xor16(&self.outer_iv, &t));
        self.outer.encrypt_block(&mut b);
        (a.into(), b.into())
    }

    /// Encrypts, in place, consecutive segments of one chunk starting at segment `first`. Every
    /// segment but the last in `buf` must be whole; the last one must be a multiple of 16 bytes.
    ///
    /// Up to `LANES` segments are CBC-encrypted in lockstep, both layers per block: block `i`
    /// of each lane goes through the inner cipher, then straight through the outer one, so the
    /// AES units always have a batch of independent blocks to work on. The whole loop runs
    /// inside the `aes` crate's backend closures, so it is compiled with the AES instructions
    /// the crate detected at run time (AES-NI here), with no dispatch per block.
    ///
    /// With AES-NI, every whole group of segments (sixteen with VAES, then, below 512-bit
    /// registers, `LANES`) is sealed by `ni::seal_groups`, and the rest by `ni::seal_rest`, in
    /// the same lockstep; without AES-NI, all of them take this path.
    pub fn seal_segments(&self, nonce: u64, chunk: u32, first: u32, buf: &mut [u8]) {
        assert!(
            buf.len().is_multiple_of(BLOCK),
            "sealed data must be whole blocks"
        );
        #[cfg(target_arch = "x86_64")]
        if let Some((outer, inner)) = &self.ni {
            let ivs = |s: usize| self.segment_ivs(nonce, chunk, first + s as u32);
            let sealed = ni::seal_groups(outer, inner, buf, ivs);
            ni::seal_rest(outer, inner, &mut buf[sealed * SEGMENT..], |s| {
                ivs(sealed + s)
            });
            return;
        }
        self.seal_portable(nonce, chunk, first, buf);
    }

    /// [`FileCipher::seal_segments`] through the `aes` crate's backends.
    fn seal_portable(&self, nonce: u64, chunk: u32, first: u32, buf: &mut [u8]) {
        self.inner.encrypt_with_backend(Segments {
            cipher: self,
            nonce,
            chunk,
            first,
            buf,
        });
    }

    /// Decrypts, in place, consecutive segments of one chunk starting at segment `first` (the
    /// inverse of [`FileCipher::seal_segments`]; padding is left for the caller to strip).
    ///
    /// CBC decryption has no chain: every block's decryption is independent, so each segment
    /// is opened a group of blocks at a time, both layers per group, straight through the two
    /// backends. Two passes through the `cbc` crate instead took 37% more instructions per byte
    /// (callgrind of a download), most of them copying blocks in and out of its arrays, and
    /// opened 1.0-1.4 GB/s in memory against 1.9-2.2 GB/s.
    pub fn open_segments(&self, nonce: u64, chunk: u32, first: u32, buf: &mut [u8]) {
        assert!(
            buf.len().is_multiple_of(BLOCK),
            "sealed data must be whole blocks"
        );
        #[cfg(target_arch = "x86_64")]
        if let Some((outer, inner)) = &self.ni {
            for (i, seg) in buf.chunks_mut(SEGMENT).enumerate() {
                let (iv_in, iv_out) = self.segment_ivs(nonce, chunk, first + i as u32);
                ni::open_segment(outer, inner, seg, iv_out, iv_in);
            }
            return;
        }
        self.open_portable(nonce, chunk, first, buf);
    }

    /// [`FileCipher::open_segments`] through the `aes` crate's backends: on a CPU without
    /// AES-NI, or on another architecture.
    fn open_portable(&self, nonce: u64, chunk: u32, first: u32, buf: &mut [u8]) {
        self.outer.decrypt_with_backend(Segments {
            cipher: self,
            nonce,
            chunk,
            first,
            buf,
        });
    }
}

/// The segments of one call, carried into the `aes` crate's backend closures. As a
/// [`BlockCipherEncClosure`] it seals, the inner layer's backend at hand first; as a
/// [`BlockCipherDecClosure`] it opens, the outer layer's first. Either way it then fetches the
/// other layer's backend, into [`Both`].
struct Segments<'a> {
    cipher: &'a FileCipher,
    nonce: u64,
    chunk: u32,
    first: u32,
    buf: &'a mut [u8],
}

impl BlockSizeUser for Segments<'_> {
    type BlockSize = U16;
}

impl BlockCipherEncClosure for Segments<'_> {
    #[inline(always)]
    fn call<I: BlockCipherEncBackend<BlockSize = U16>>(self, inner: &I) {
        let outer = &self.cipher.outer;
        outer.encrypt_with_backend(Both {
            job: self,
            fetched: inner,
        });
    }
}

impl BlockCipherDecClosure for Segments<'_> {
    #[inline(always)]
    fn call<O: BlockCipherDecBackend<BlockSize = U16>>(self, outer: &O) {
        let inner = &self.cipher.inner;
        inner.decrypt_with_backend(Both {
            job: self,
            fetched: outer,
        });
    }
}

/// The second step: the backend fetched first (sealing: the inner layer's; opening: the
/// outer's) is at hand, and the closure gets the other.
struct Both<'a, 'b, B> {
    job: Segments<'a>,
    fetched: &'b B,
}

impl<B> BlockSizeUser for Both<'_, '_, B> {
    type BlockSize = U16;
}

impl<O: BlockCipherDecBackend<BlockSize = U16>> BlockCipherDecClosure for Both<'_, '_, O> {
    #[inline(always)]
    fn call<I: BlockCipherDecBackend<BlockSize = U16>>(self, inner: &I) {
        let Both {
            job,
            fetched: outer,
        } = self;
        for (i, seg) in job.buf.chunks_mut(SEGMENT).enumerate() {
            let (iv_in, iv_out) =
                job.cipher
                    .segment_ivs(job.nonce, job.chunk, job.first + i as u32);
            let mut prev_out = u128::from_ne_bytes(iv_out);
            let mut prev_in = u128::from_ne_bytes(iv_in);
            for group in seg.chunks_mut(OPEN_GROUP * BLOCK) {
                let n = group.len() / BLOCK;
                if n == OPEN_GROUP {
                    // The common case, with a constant count the compiler unrolls.
                    open_group(inner, outer, group, OPEN_GROUP, &mut prev_in, &mut prev_out);
                } else {
                    open_group(inner, outer, group, n, &mut prev_in, &mut prev_out);
                }
            }
        }
    }
}

/// Blocks opened side by side: the AES-NI backend's eight parallel blocks. Sixteen opened no
/// faster, with 11% more instructions.
const OPEN_GROUP: usize = 8;

/// Opens the first `n` blocks of `group`, both layers: the outer layer's plaintext is the inner
/// layer's ciphertext. `prev_*` hold each layer's ciphertext block before the group.
#[inline(always)]
fn open_group<I, O>(
    inner: &I,
    outer: &O,
    group: &mut [u8],
    n: usize,
    prev_in: &mut u128,
    prev_out: &mut u128,
) where
    I: BlockCipherDecBackend<BlockSize = U16>,
    O: BlockCipherDecBackend<BlockSize = U16>,
{
    let mut sealed = [0u128; OPEN_GROUP];
    let mut x = [Block::default(); OPEN_GROUP];
    for j in 0..n {
        sealed[j] = u128::from_ne_bytes(group[j * BLOCK..][..BLOCK].try_into().unwrap());
        x[j] = Block::from(sealed[j].to_ne_bytes());
    }
    decrypt_with(outer, &mut x[..n]);
    // The outer layer's plaintext, which is the inner layer's ciphertext.
    let mut mid = [0u128; OPEN_GROUP];
    for j in 0..n {
        let before = if j == 0 { *prev_out } else { sealed[j - 1] };
        mid[j] = to_u128(&x[j]) ^ before;
        x[j] = Block::from(mid[j].to_ne_bytes());
    }
    *prev_out = sealed[n - 1];
    decrypt_with(inner, &mut x[..n]);
    for j in 0..n {
        let before = if j == 0 { *prev_in } else { mid[j - 1] };
        let plain = to_u128(&x[j]) ^ before;
        group[j * BLOCK..][..BLOCK].copy_from_slice(&plain.to_ne_bytes());
    }
    *prev_in = mid[n - 1];
}

/// Decrypts independent blocks with a backend: whole batches of its parallel width, then the rest.
#[inline(always)]
fn decrypt_with<B: BlockCipherDecBackend<BlockSize = U16>>(backend: &B, blocks: &mut [Block]) {
    let (par, tail) = ParBlocks::<B>::slice_as_chunks_mut(blocks);
    for p in par {
        backend.decrypt_par_blocks_inplace(p);
    }
    for b in tail {
        backend.decrypt_block_inplace(b);
    }
}

impl<I: BlockCipherEncBackend<BlockSize = U16>> BlockCipherEncClosure for Both<'_, '_, I> {
    #[inline(always)]
    fn call<O: BlockCipherEncBackend<BlockSize = U16>>(self, outer: &O) {
        let Both {
            job,
            fetched: inner,
        } = self;
        let c = job.cipher;
        let mut seg = job.first;
        for group in job.buf.chunks_mut(SEGMENT * LANES) {
            let lanes = group.len().div_ceil(SEGMENT);
            // Each lane's IVs: the tweak under each layer's key, all lanes at once.
            let mut iv_in = [Block::default(); LANES];
            let mut iv_out = [Block::default(); LANES];
            for l in 0..lanes {
                let t = tweak(job.nonce, job.chunk, seg + l as u32);
                iv_in[l] = Block::from(xor16(&c.inner_iv, &t));
                iv_out[l] = Block::from(xor16(&c.outer_iv, &t));
            }
            encrypt_with(inner, &mut iv_in[..lanes]);
            encrypt_with(outer, &mut iv_out[..lanes]);
            seg += lanes as u32;
            let mut prev_in: [u128; LANES] = std::array::from_fn(|l| to_u128(&iv_in[l]));
            let mut prev_out: [u128; LANES] = std::array::from_fn(|l| to_u128(&iv_out[l]));
            // Lanes are in order and only the last can be short: the live ones are a prefix.
            let last_rows = (group.len() - (lanes - 1) * SEGMENT) / BLOCK;
            let rows = if lanes > 1 {
                SEGMENT / BLOCK
            } else {
                last_rows
            };
            for r in 0..rows {
                if r < last_rows && lanes == LANES {
                    // The common case, with a constant lane count the compiler unrolls.
                    seal_row(inner, outer, group, r, LANES, &mut prev_in, &mut prev_out);
                } else {
                    let live = if r < last_rows { lanes } else { lanes - 1 };
                    seal_row(inner, outer, group, r, live, &mut prev_in, &mut prev_out);
                }
            }
        }
    }
}

/// Encrypts block `r` of the first `live` lanes of `group`, both layers.
#[inline(always)]
fn seal_row<I, O>(
    inner: &I,
    outer: &O,
    group: &mut [u8],
    r: usize,
    live: usize,
    prev_in: &mut [u128; LANES],
    prev_out: &mut [u128; LANES],
) where
    I: BlockCipherEncBackend<BlockSize = U16>,
    O: BlockCipherEncBackend<BlockSize = U16>,
{
    let mut x = [Block::default(); LANES];
    for l in 0..live {
        let at = l * SEGMENT + r * BLOCK;
        let p = u128::from_ne_bytes(group[at..at + BLOCK].try_into().unwrap());
        x[l] = Block::from((p ^ prev_in[l]).to_ne_bytes());
    }
    encrypt_with(inner, &mut x[..live]);
    for l in 0..live {
        prev_in[l] = to_u128(&x[l]);
        x[l] = Block::from((prev_in[l] ^ prev_out[l]).to_ne_bytes());
    }
    encrypt_with(outer, &mut x[..live]);
    for l in 0..live {
        prev_out[l] = to_u128(&x[l]);
        let at = l * SEGMENT + r * BLOCK;
        group[at..at + BLOCK].copy_from_slice(&x[l]);
    }
}

#[inline(always)]
fn to_u128(b: &Block) -> u128 {
    u128::from_ne_bytes((*b).into())
}

/// Encrypts independent blocks with a backend: whole batches of its parallel width, then the rest.
#[inline(always)]
fn encrypt_with<B: BlockCipherEncBackend<BlockSize = U16>>(backend: &B, blocks: &mut [Block]) {
    let (par, tail) = ParBlocks::<B>::slice_as_chunks_mut(blocks);
    for p in par {
        backend.encrypt_par_blocks_inplace(p);
    }
    for b in tail {
        backend.encrypt_block_inplace(b);
    }
}

/// Appends PKCS#7 padding: 1 to 16 bytes, each holding the pad length.
pub fn pad(buf: &mut Vec<u8>) {
    let p = BLOCK - buf.len() % BLOCK;
    buf.resize(buf.len() + p, p as u8);
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses exactly `N` bytes of hex.
pub fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::{BlockModeEncrypt, KeyIvInit};

    fn global() -> GlobalKey {
        GlobalKey::from_bytes(&std::array::from_fn(|i| i as u8))
    }

    #[test]
    fn lockstep_sealing_equals_two_plain_cbc_passes_per_segment() {
        let g = global();
        let keys = FileKeys::generate();
        let fc = FileCipher::new(&g, &keys);
        for len in [
            0usize,
            1,
            15,
            16,
            17,
            SEGMENT - 1,
            SEGMENT,
            3 * SEGMENT + 5,
            9 * SEGMENT + 100,
            2 * SEGMENT,
            4 * SEGMENT - 16,
            5 * SEGMENT + 31,
            6 * SEGMENT + 1696,
            7 * SEGMENT,
            8 * SEGMENT - 1,
            15 * SEGMENT + 200,
            16 * SEGMENT,
            25 * SEGMENT + 48,
            33 * SEGMENT + 48,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let mut buf = plain.clone();
            pad(&mut buf);
            fc.seal_segments(42, 3, 0, &mut buf);
            // Without AES-NI, the same bytes.
            let mut portable = plain.clone();
            pad(&mut portable);
            fc.seal_portable(42, 3, 0, &mut portable);
            assert_eq!(portable, buf, "len {len}");
            // Reference: each segment through `cbc` twice, one serial chain per layer.
            let mut padded = plain.clone();
            pad(&mut padded);
            for (s, seg) in padded.chunks(SEGMENT).enumerate() {
                let (iv_in, iv_out) = fc.segment_ivs(42, 3, s as u32);
                let mut x = seg.to_vec();
                let (blocks, _) = Block::slice_as_chunks_mut(&mut x);
                cbc::Encryptor::<Aes256>::new(&keys.key.into(), &iv_in.into())
                    .encrypt_blocks(blocks);
                let raw_g: [u8; 32] = std::array::from_fn(|i| i as u8);
                cbc::Encryptor::<Aes256>::new(&raw_g.into(), &iv_out.into()).encrypt_blocks(blocks);
                assert_eq!(
                    &buf[s * SEGMENT..][..seg.len()],
                    &x[..],
                    "len {len} segment {s}"
                );
            }
            fc.open_segments(42, 3, 0, &mut buf);
            assert_eq!(&buf[..len], &plain[..]);
            assert_eq!(buf.len() as u64, sealed_len(len as u64));
        }
    }

    #[test]
    fn sealing_in_batches_equals_one_pass() {
        // The upload path seals a chunk in batches of whole segments, passing the first segment
        // number of each: any cut must give the bytes of one pass over the whole chunk.
        let fc = FileCipher::new(&global(), &FileKeys::generate());
        for len in [
            17 * SEGMENT + 4096,
            16 * SEGMENT,
            8 * SEGMENT + 16,
            23 * SEGMENT + 48,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
            let mut whole = plain.clone();
            fc.seal_segments(9, 4, 0, &mut whole);
            for batch in [1, 3, 8, 9, 16, 17] {
                let mut cut = plain.clone();
                for (i, piece) in cut.chunks_mut(batch * SEGMENT).enumerate() {
                    fc.seal_segments(9, 4, (i * batch) as u32, piece);
                }
                assert_eq!(cut, whole, "len {len} batch {batch}");
            }
            // Downloads open a chunk in batches too, each from its first segment's number.
            for batch in [1, 3, 8, 9, 16, 17] {
                let mut cut = whole.clone();
                for (i, piece) in cut.chunks_mut(batch * SEGMENT).enumerate() {
                    fc.open_segments(9, 4, (i * batch) as u32, piece);
                }
                assert_eq!(cut, plain, "len {len} batch {batch}");
            }
            fc.open_segments(9, 4, 0, &mut whole);
            assert_eq!(whole, plain);
        }
    }

    #[test]
    fn opening_equals_two_plain_cbc_decryptions_per_segment() {
        use aes::cipher::{BlockModeDecrypt, KeyIvInit};
        let keys = FileKeys::generate();
        let fc = FileCipher::new(&global(), &keys);
        let raw_g: [u8; 32] = std::array::from_fn(|i| i as u8);
        // Whole groups of blocks, a short last group, one block, several segments.
        for len in [16usize, 48, 256, 272, 4096 + 32, SEGMENT, 5 * SEGMENT + 240] {
            // Any bytes decrypt: the reference is `cbc`, outer layer first, per segment.
            let sealed: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
            let mut got = sealed.clone();
            fc.open_segments(5, 2, 7, &mut got);
            // Without AES-NI, the same bytes.
            let mut portable = sealed.clone();
            fc.open_portable(5, 2, 7, &mut portable);
            assert_eq!(portable, got, "len {len}");
            for (s, seg) in sealed.chunks(SEGMENT).enumerate() {
                let (iv_in, iv_out) = fc.segment_ivs(5, 2, 7 + s as u32);
                let mut x = seg.to_vec();
                let (blocks, _) = Block::slice_as_chunks_mut(&mut x);
                cbc::Decryptor::<Aes256>::new(&raw_g.into(), &iv_out.into()).decrypt_blocks(blocks);
                cbc::Decryptor::<Aes256>::new(&keys.key.into(), &iv_in.into())
                    .decrypt_blocks(blocks);
                assert_eq!(
                    &got[s * SEGMENT..][..seg.len()],
                    &x[..],
                    "len {len} segment {s}"
                );
            }
        }
    }

    #[test]
    fn segment_ivs_differ_by_nonce_chunk_segment_and_file() {
        let g = global();
        let a = FileCipher::new(&g, &FileKeys::generate());
        let b = FileCipher::new(&g, &FileKeys::generate());
        let base = a.segment_ivs(1, 1, 0);
        assert_ne!(base, a.segment_ivs(2, 1, 0));
        assert_ne!(base, a.segment_ivs(1, 2, 0));
        assert_ne!(base, a.segment_ivs(1, 1, 1));
        assert_ne!(
            base.1,
            b.segment_ivs(1, 1, 0).1,
            "outer IVs under the shared key differ per file"
        );
    }

    #[test]
    fn wrap_round_trips_and_hides_the_key() {
        let g = global();
        let keys = FileKeys::generate();
        let w = g.wrap(&keys);
        assert_eq!(w.len(), 64);
        assert!(!w.windows(32).any(|x| x == keys.key));
        let u = g.unwrap(&w).unwrap();
        assert_eq!(u.key, keys.key);
        assert_eq!(u.iv, keys.iv);
        assert_ne!(w, g.wrap(&keys), "each wrap uses a fresh IV");
    }

    #[test]
    fn key_file_is_created_0600_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let a = GlobalKey::load_or_create(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = GlobalKey::load_or_create(&p).unwrap();
        assert_eq!(a.check_value(), b.check_value());
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            GlobalKey::load_or_create(&p)
                .unwrap_err()
                .to_string()
                .contains("chmod 600")
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&p, "abcd\n").unwrap();
        assert!(
            GlobalKey::load_or_create(&p)
                .unwrap_err()
                .to_string()
                .contains("96 hex digits")
        );
    }
}
