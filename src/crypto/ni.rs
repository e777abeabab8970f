//! Both layers with AES-NI, written out by hand: the one place chunkd uses `unsafe`.
//!
//! Opening is most of a download's CPU (40% of the server's samples in a download run, perf),
//! sealing a quarter of an upload's. Through the `aes` crate's backends the compiler emitted
//! each block's fourteen rounds one after another instead of a round over all eight blocks of
//! a group (perf annotate), so the CPU had only a few blocks in flight: in memory, opening ran
//! at 1.8-2.2 GB/s per core and sealing at 2.1-2.6, where `openssl` decrypts one layer at 6.7.
//! The same rounds written as intrinsics were reordered the same way, so the eight-block rounds
//! are assembly ([`rounds8`]), and the chain's XORs stay in vector registers: 3.0-3.2 GB/s
//! either way.
//!
//! `unsafe` is needed for two things: calling the `#[target_feature(enable = "aes")]`
//! functions, which is sound because a [`Keys`] exists only once AES-NI has been detected on
//! this CPU; and the assembly, which reads only the round keys. Blocks move between bytes and
//! registers through `bytemuck`, without `unsafe`. Tests check the keys against the `aes`
//! crate, and sealing and opening against the `cbc` crate and the portable path.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m128i, _mm_aesdec_si128, _mm_aesdeclast_si128, _mm_aesimc_si128, _mm_aeskeygenassist_si128,
    _mm_shuffle_epi32, _mm_slli_si128, _mm_xor_si128,
};

use super::{BLOCK, LANES, SEGMENT};

/// Blocks opened side by side: two AES units with four cycles of latency need eight.
const GROUP: usize = 8;

/// Runs eight independent blocks through all fourteen rounds of one key schedule, a round at a
/// time over all of them: `rounds8!(keys, blocks, "aesenc", "aesenclast")` encrypts, the
/// `aesdec` pair with decryption keys decrypts. Use only where AES-NI is enabled.
///
/// In assembly, because the compiler reorders intrinsics: from the same rounds written as
/// intrinsics it emitted each block's fourteen rounds one after another (perf annotate), so the
/// CPU had only a few blocks in flight and opening ran no faster than through the `aes` crate.
macro_rules! rounds8 {
    ($keys:expr, $blocks:expr, $round:literal, $last:literal) => {{
        let keys: &[__m128i; 15] = &$keys;
        let [mut b0, mut b1, mut b2, mut b3, mut b4, mut b5, mut b6, mut b7] = $blocks;
        // SAFETY: the assembly reads the 15 round keys behind `keys` (240 bytes) and writes
        // only the registers it names; the caller runs with AES-NI enabled.
        unsafe {
            std::arch::asm!(
                // `.irp` repeats its body for each value: once per block, once per round key.
                "movdqu {t}, xmmword ptr [{k}]",
                ".irp b, {b0}, {b1}, {b2}, {b3}, {b4}, {b5}, {b6}, {b7}",
                "pxor \\b, {t}",
                ".endr",
                ".irp off, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208",
                "movdqu {t}, xmmword ptr [{k} + \\off]",
                ".irp b, {b0}, {b1}, {b2}, {b3}, {b4}, {b5}, {b6}, {b7}",
                concat!($round, " \\b, {t}"),
                ".endr",
                ".endr",
                "movdqu {t}, xmmword ptr [{k} + 224]",
                ".irp b, {b0}, {b1}, {b2}, {b3}, {b4}, {b5}, {b6}, {b7}",
                concat!($last, " \\b, {t}"),
                ".endr",
                k = in(reg) keys.as_ptr(),
                t = out(xmm_reg) _,
                b0 = inout(xmm_reg) b0,
                b1 = inout(xmm_reg) b1,
                b2 = inout(xmm_reg) b2,
                b3 = inout(xmm_reg) b3,
                b4 = inout(xmm_reg) b4,
                b5 = inout(xmm_reg) b5,
                b6 = inout(xmm_reg) b6,
                b7 = inout(xmm_reg) b7,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        [b0, b1, b2, b3, b4, b5, b6, b7]
    }};
}

/// The round keys of one AES-256 key: the cipher's, and the equivalent inverse cipher's.
#[derive(Clone, Copy)]
pub(super) struct Keys {
    enc: [__m128i; 15],
    dec: [__m128i; 15],
}

impl Keys {
    /// The round keys of `key`, or `None` on a CPU without AES-NI.
    pub(super) fn new(key: &[u8; 32]) -> Option<Self> {
        if !std::arch::is_x86_feature_detected!("aes") {
            return None;
        }
        // SAFETY: AES-NI is present, checked just above.
        Some(unsafe { expand(key) })
    }
}

/// Seals `LANES` whole segments in place, both layers, each lane with its own IVs: the
/// lockstep of `FileCipher::seal_segments`, block `r` of every lane through the inner layer,
/// then through the outer one.
pub(super) fn seal_lanes(
    outer: &Keys,
    inner: &Keys,
    group: &mut [u8],
    iv_in: [[u8; 16]; LANES],
    iv_out: [[u8; 16]; LANES],
) {
    assert_eq!(group.len(), LANES * SEGMENT, "whole lanes only");
    // SAFETY: a `Keys` exists only once AES-NI has been detected (`Keys::new`).
    unsafe { seal(outer, inner, group, iv_in, iv_out) }
}

#[target_feature(enable = "aes")]
fn seal(
    outer: &Keys,
    inner: &Keys,
    group: &mut [u8],
    iv_in: [[u8; 16]; LANES],
    iv_out: [[u8; 16]; LANES],
) {
    const ROWS: usize = SEGMENT / BLOCK;
    let mut prev_in = iv_in.map(to_reg);
    let mut prev_out = iv_out.map(to_reg);
    for r in 0..ROWS {
        let mut x = prev_in;
        for (l, b) in x.iter_mut().enumerate() {
            *b = _mm_xor_si128(load(group, l * ROWS + r), *b);
        }
        // Row `r + 1` of the inner layer needs only this row's inner blocks, so the CPU
        // overlaps it with this row's outer layer.
        prev_in = rounds8!(inner.enc, x, "aesenc", "aesenclast");
        for ((b, i), o) in x.iter_mut().zip(prev_in).zip(prev_out) {
            *b = _mm_xor_si128(i, o);
        }
        prev_out = rounds8!(outer.enc, x, "aesenc", "aesenclast");
        for (l, b) in prev_out.iter().enumerate() {
            store(group, l * ROWS + r, *b);
        }
    }
}

/// Opens one segment in place, both layers: `outer` and its IV first, then `inner`. The
/// segment must be whole blocks.
pub(super) fn open_segment(
    outer: &Keys,
    inner: &Keys,
    seg: &mut [u8],
    iv_out: [u8; 16],
    iv_in: [u8; 16],
) {
    // SAFETY: a `Keys` exists only once AES-NI has been detected (`Keys::new`).
    unsafe { open(outer, inner, seg, iv_out, iv_in) }
}

#[target_feature(enable = "aes")]
fn open(outer: &Keys, inner: &Keys, seg: &mut [u8], iv_out: [u8; 16], iv_in: [u8; 16]) {
    let mut prev_out = to_reg(iv_out);
    let mut prev_in = to_reg(iv_in);
    let mut groups = seg.chunks_exact_mut(GROUP * BLOCK);
    for group in &mut groups {
        let mut sealed = [prev_out; GROUP];
        for (j, s) in sealed.iter_mut().enumerate() {
            *s = load(group, j);
        }
        // The outer layer: all eight blocks through each round, then the chain.
        let mut x = rounds8!(outer.dec, sealed, "aesdec", "aesdeclast");
        x[0] = _mm_xor_si128(x[0], prev_out);
        for j in 1..GROUP {
            x[j] = _mm_xor_si128(x[j], sealed[j - 1]);
        }
        prev_out = sealed[GROUP - 1];
        // `x` is now the inner layer's ciphertext.
        let mid = x;
        let mut x = rounds8!(inner.dec, mid, "aesdec", "aesdeclast");
        x[0] = _mm_xor_si128(x[0], prev_in);
        for j in 1..GROUP {
            x[j] = _mm_xor_si128(x[j], mid[j - 1]);
        }
        prev_in = mid[GROUP - 1];
        for (j, p) in x.iter().enumerate() {
            store(group, j, *p);
        }
    }
    // A short last segment ends in fewer than eight blocks.
    for block in groups.into_remainder().chunks_exact_mut(BLOCK) {
        let sealed = load(block, 0);
        let mid = _mm_xor_si128(decrypt1(outer, sealed), prev_out);
        prev_out = sealed;
        let plain = _mm_xor_si128(decrypt1(inner, mid), prev_in);
        prev_in = mid;
        store(block, 0, plain);
    }
}

#[inline]
#[target_feature(enable = "aes")]
fn decrypt1(k: &Keys, mut b: __m128i) -> __m128i {
    b = _mm_xor_si128(b, k.dec[0]);
    for key in &k.dec[1..14] {
        b = _mm_aesdec_si128(b, *key);
    }
    _mm_aesdeclast_si128(b, k.dec[14])
}

/// AES-256 key expansion (FIPS-197), then the decryption keys: the encryption keys in reverse,
/// all but the first and last through InvMixColumns.
#[target_feature(enable = "aes")]
fn expand(key: &[u8; 32]) -> Keys {
    let mut enc = [to_reg(key[..16].try_into().unwrap()); 15];
    enc[1] = to_reg(key[16..].try_into().unwrap());
    // Each step makes two round keys from the two before them; `RCON` is the round constant.
    #[inline]
    #[target_feature(enable = "aes")]
    fn step<const RCON: i32>(enc: &mut [__m128i; 15], i: usize) {
        let (a, b) = (enc[i - 2], enc[i - 1]);
        let t = _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<RCON>(b));
        enc[i] = _mm_xor_si128(spread(a), t);
        if i + 1 < 15 {
            let t = _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(enc[i]));
            enc[i + 1] = _mm_xor_si128(spread(b), t);
        }
    }
    step::<0x01>(&mut enc, 2);
    step::<0x02>(&mut enc, 4);
    step::<0x04>(&mut enc, 6);
    step::<0x08>(&mut enc, 8);
    step::<0x10>(&mut enc, 10);
    step::<0x20>(&mut enc, 12);
    step::<0x40>(&mut enc, 14);
    let mut dec = enc;
    dec[0] = enc[14];
    for i in 1..14 {
        dec[i] = _mm_aesimc_si128(enc[14 - i]);
    }
    dec[14] = enc[0];
    Keys { enc, dec }
}

/// `w0, w0^w1, w0^w1^w2, w0^w1^w2^w3` of the four words of `a`: the running XOR of the key
/// schedule.
#[inline]
#[target_feature(enable = "aes")]
fn spread(a: __m128i) -> __m128i {
    let a = _mm_xor_si128(a, _mm_slli_si128::<4>(a));
    _mm_xor_si128(a, _mm_slli_si128::<8>(a))
}

#[inline(always)]
fn to_reg(b: [u8; 16]) -> __m128i {
    bytemuck::cast(b)
}

#[inline(always)]
fn load(buf: &[u8], j: usize) -> __m128i {
    to_reg(buf[j * BLOCK..][..BLOCK].try_into().unwrap())
}

#[inline(always)]
fn store(buf: &mut [u8], j: usize, b: __m128i) {
    buf[j * BLOCK..][..BLOCK].copy_from_slice(&bytemuck::cast::<__m128i, [u8; 16]>(b));
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::Aes256;
    use aes::cipher::{Array, BlockCipherDecrypt, KeyInit};

    /// Decrypting independent blocks (no chain) with these keys equals the `aes` crate's
    /// decryption, for keys and blocks from a fixed pseudo-random stream.
    #[test]
    fn round_keys_decrypt_as_the_aes_crate_does() {
        let Some(_) = Keys::new(&[0; 32]) else {
            eprintln!("no AES-NI on this CPU: nothing to compare");
            return;
        };
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        for _ in 0..64 {
            let key: [u8; 32] = std::array::from_fn(|_| next());
            let ours = Keys::new(&key).unwrap();
            let theirs = Aes256::new_from_slice(&key).unwrap();
            let block: [u8; 16] = std::array::from_fn(|_| next());
            let mut want = Array::from(block);
            theirs.decrypt_block(&mut want);
            // SAFETY: AES-NI is present (`Keys::new` returned keys).
            let got = unsafe { decrypt1(&ours, to_reg(block)) };
            assert_eq!(
                bytemuck::cast::<__m128i, [u8; 16]>(got),
                <[u8; 16]>::from(want)
            );
        }
    }
}
