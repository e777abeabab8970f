//! Both layers with AES-NI, and with VAES where the CPU has it, written out by hand: the one
//! place chunkd uses `unsafe`.
//!
//! Three register widths, the widest the CPU has ([`Width`]): AES-NI on 128-bit registers,
//! VAES on 256-bit ones with AVX2 (round 7) and on 512-bit ones with AVX-512F (round 10).
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
//! Those eight blocks keep both AES units busy, so the rest comes from VAES, which runs the
//! same rounds on two blocks per 256-bit register at no extra cost on this CPU (a loop of
//! rounds alone: 7.0 GB/s on eight 128-bit registers, 14.3 on eight 256-bit ones, one layer).
//! Where VAES and AVX2 are detected, [`rounds16`] takes sixteen blocks: in memory, opening
//! went from 3.2-3.3 to 5.7-5.9 GB/s and sealing from 3.1-3.2 to 4.1-4.3 (BENCHMARKS.md,
//! round 7).
//!
//! Round 10's CPU (an AMD EPYC of family 26) runs an AES instruction on a 512-bit register at
//! the cost of one on a 256-bit register (rounds alone: 17 GB/s on eight 256-bit registers, 33
//! on eight 512-bit ones, one layer), so where VAES and AVX-512F are detected, [`rounds32`] and
//! [`rounds16z`] take four blocks per register: in memory, opening went from 7.4-7.6 to 14.2-14.8
//! GB/s and sealing from 6.1-6.2 to 8.6-9.0. A CPU that splits a 512-bit AES instruction into
//! two 256-bit halves should do no worse on the widest registers than on 256-bit ones; no such
//! CPU was at hand to measure.
//!
//! What the groups of segments leave of a call (a small file, a chunk's last batch) is sealed
//! the same way, on as many registers as its lanes need ([`seal_rest`], round 11), instead of
//! through the `aes` crate.
//!
//! `unsafe` is needed for two things: calling the `#[target_feature]` functions, which is sound
//! because a [`Keys`] exists only once AES-NI has been detected on this CPU, and says whether
//! VAES with AVX2, and AVX-512F besides, have been too; and the assembly, which reads only the
//! round keys. Blocks move between bytes and registers through `bytemuck` (its `avx512_simd`
//! feature for the 512-bit ones), without `unsafe`. Tests check the keys against the `aes`
//! crate, every register width the CPU has against the narrowest, and sealing and opening
//! against the `cbc` crate and the portable path.
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m128i, __m256i, __m512i, _mm_aesdec_si128, _mm_aesdeclast_si128, _mm_aesimc_si128,
    _mm_aeskeygenassist_si128, _mm_shuffle_epi32, _mm_slli_si128, _mm_xor_si128,
    _mm256_broadcastsi128_si256, _mm256_castsi256_si128, _mm256_extracti128_si256,
    _mm256_permute2x128_si256, _mm256_set_m128i, _mm256_xor_si256, _mm512_alignr_epi64,
    _mm512_broadcast_i32x4, _mm512_castsi128_si512, _mm512_extracti32x4_epi32, _mm512_inserti32x4,
    _mm512_xor_si512,
};

use super::{BLOCK, LANES, SEGMENT};

/// Blocks opened side by side: two AES units with four cycles of latency need eight.
const GROUP: usize = 8;
/// Blocks through [`rounds16`] at once, two to a register: sixteen blocks of a segment when
/// opening, block `r` of sixteen segments when sealing. Sixteen keep the two AES units as busy
/// as eight did on 128-bit registers, with twice the blocks per instruction.
const WIDE: usize = 16;

/// Runs registers of independent blocks (`$b`, eight or four) through all fourteen rounds of
/// one key schedule, a round at a time over all of them: [`rounds8`] on 128-bit registers with
/// AES-NI, [`rounds16`] on 256-bit ones and [`rounds32`] and [`rounds16z`] on 512-bit ones
/// with VAES. `$key` is the register type, `$reg` its register class and `$width` its size in
/// bytes; `$mov` and `$xor` are the load and XOR instructions, and `$operands` the operands of
/// the XOR and of every round, where `\b` is the block's register and `{t}` the round key's.
///
/// In assembly, because the compiler reorders intrinsics: from the same rounds written as
/// intrinsics it emitted each block's fourteen rounds one after another (perf annotate), so the
/// CPU had only a few blocks in flight and opening ran no faster than through the `aes` crate.
macro_rules! rounds {
    ($keys:expr, $blocks:expr, [$b0:ident $(, $b:ident)*], $key:ty, $reg:ident, $width:literal,
     $mov:literal, $xor:literal, $round:literal, $last:literal, $operands:literal) => {{
        let keys: &[$key; 15] = &$keys;
        let [mut $b0 $(, mut $b)*] = $blocks;
        // SAFETY: the assembly reads the 15 round keys behind `keys` and writes only the
        // registers it names; the caller runs with the instructions' CPU features enabled.
        unsafe {
            std::arch::asm!(
                // `.irp` repeats its body for each value: once per block, once per round key.
                concat!($mov, " {t}, [{k}]"),
                concat!(".irp b, {", stringify!($b0), "}" $(, ", {", stringify!($b), "}")*),
                concat!($xor, " ", $operands),
                ".endr",
                ".irp i, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13",
                concat!($mov, " {t}, [{k} + \\i * ", $width, "]"),
                concat!(".irp b, {", stringify!($b0), "}" $(, ", {", stringify!($b), "}")*),
                concat!($round, " ", $operands),
                ".endr",
                ".endr",
                concat!($mov, " {t}, [{k} + 14 * ", $width, "]"),
                concat!(".irp b, {", stringify!($b0), "}" $(, ", {", stringify!($b), "}")*),
                concat!($last, " ", $operands),
                ".endr",
                k = in(reg) keys.as_ptr(),
                t = out($reg) _,
                $b0 = inout($reg) $b0,
                $($b = inout($reg) $b,)*
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        [$b0 $(, $b)*]
    }};
}

/// Eight blocks through [`rounds`] with AES-NI: `rounds8!(keys, blocks, "aesenc",
/// "aesenclast")` encrypts, the `aesdec` pair with decryption keys decrypts. Use only where
/// AES-NI is enabled.
macro_rules! rounds8 {
    ($keys:expr, $blocks:expr, $round:literal, $last:literal) => {
        rounds_xmm!(
            $keys,
            $blocks,
            [b0, b1, b2, b3, b4, b5, b6, b7],
            $round,
            $last
        )
    };
}

/// [`rounds`] on the 128-bit registers named in `[...]`, with AES-NI: eight for [`rounds8`],
/// two or four for [`seal_rest`]'s few lanes.
macro_rules! rounds_xmm {
    ($keys:expr, $blocks:expr, [$($b:ident),+], $round:literal, $last:literal) => {
        rounds!(
            $keys,
            $blocks,
            [$($b),+],
            __m128i,
            xmm_reg,
            "16",
            "movdqu",
            "pxor",
            $round,
            $last,
            "\\b, {t}"
        )
    };
}

/// Sixteen blocks, two to a 256-bit register, through [`rounds`] with VAES (each round key in
/// both halves of its register, [`widen`]): `rounds16!(keys, blocks, "vaesenc",
/// "vaesenclast")` encrypts. Use only where VAES and AVX2 are enabled. On this machine's CPU
/// an AES instruction on a 256-bit register costs what one on a 128-bit register does, so this
/// does twice the blocks in the same time (BENCHMARKS.md, round 7).
macro_rules! rounds16 {
    ($keys:expr, $blocks:expr, $round:literal, $last:literal) => {
        rounds!(
            $keys,
            $blocks,
            [b0, b1, b2, b3, b4, b5, b6, b7],
            __m256i,
            ymm_reg,
            "32",
            "vmovdqu",
            "vpxor",
            $round,
            $last,
            "\\b, \\b, {t}"
        )
    };
}

/// Blocks through [`rounds`] on 512-bit registers with VAES, four to a register (each round key
/// in all four quarters, [`widen4`]): `rounds32!` takes eight registers, thirty-two blocks, and
/// `rounds16z!` four registers, sixteen blocks, the lanes of one sealing group. Use only where
/// VAES and AVX-512F are enabled. On this round's CPU an AES instruction on a 512-bit register
/// costs what one on a 256-bit register does (a loop of rounds alone: 33 GB/s on eight 512-bit
/// registers, 17 on eight 256-bit ones, one layer; BENCHMARKS.md, round 10).
macro_rules! rounds32 {
    ($keys:expr, $blocks:expr, $round:literal, $last:literal) => {
        rounds_zmm!(
            $keys,
            $blocks,
            [b0, b1, b2, b3, b4, b5, b6, b7],
            $round,
            $last
        )
    };
}

/// [`rounds32`]'s rounds on four registers: see there.
macro_rules! rounds16z {
    ($keys:expr, $blocks:expr, $round:literal, $last:literal) => {
        rounds_zmm!($keys, $blocks, [b0, b1, b2, b3], $round, $last)
    };
}

/// [`rounds`] on the 512-bit registers named in `[...]`, with VAES and AVX-512F: eight for
/// [`rounds32`], four for [`rounds16z`], one, two or four for [`seal_rest`].
macro_rules! rounds_zmm {
    ($keys:expr, $blocks:expr, [$($b:ident),+], $round:literal, $last:literal) => {
        rounds!(
            $keys,
            $blocks,
            [$($b),+],
            __m512i,
            zmm_reg,
            "64",
            "vmovdqu64",
            "vpxorq",
            $round,
            $last,
            "\\b, \\b, {t}"
        )
    };
}

/// The widest registers this CPU's AES instructions take: found with the keys, and ordered,
/// so that a test can cap it ([`Keys::capped`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Width {
    /// AES-NI alone: a block per 128-bit register ([`rounds8`]).
    Xmm,
    /// VAES and AVX2: two blocks per 256-bit register ([`rounds16`]).
    Ymm,
    /// VAES, AVX2 and AVX-512F: four blocks per 512-bit register ([`rounds32`], [`rounds16z`]).
    Zmm,
}

/// The round keys of one AES-256 key: the cipher's, and the equivalent inverse cipher's.
#[derive(Clone, Copy)]
pub(super) struct Keys {
    enc: [__m128i; 15],
    dec: [__m128i; 15],
    /// The widest registers the AES instructions take on this CPU.
    width: Width,
}

impl Keys {
    /// The round keys of `key`, or `None` on a CPU without AES-NI.
    pub(super) fn new(key: &[u8; 32]) -> Option<Self> {
        if !std::arch::is_x86_feature_detected!("aes") {
            return None;
        }
        // SAFETY: AES-NI is present, checked just above.
        let mut keys = unsafe { expand(key) };
        // The 512-bit paths fall back on the 256-bit ones for a segment's rest, so they need
        // AVX2 too.
        let vaes = std::arch::is_x86_feature_detected!("vaes")
            && std::arch::is_x86_feature_detected!("avx2");
        keys.width = if vaes && std::arch::is_x86_feature_detected!("avx512f") {
            Width::Zmm
        } else if vaes {
            Width::Ymm
        } else {
            Width::Xmm
        };
        Some(keys)
    }

    /// These keys with registers no wider than `width`, as on a CPU without the wider
    /// instructions: for the tests that compare the paths.
    #[cfg(test)]
    pub(super) fn capped(mut self, width: Width) -> Self {
        self.width = self.width.min(width);
        self
    }

    /// The widest registers these keys use.
    #[cfg(test)]
    pub(super) fn width(&self) -> Width {
        self.width
    }
}

/// Seals, in place, the leading whole groups of segments of `buf`, both layers, in the
/// lockstep of `FileCipher::seal_segments`: block `r` of every lane of a group through the inner
/// layer, then through the outer one. A group is [`WIDE`] segments with VAES, then, below
/// 512-bit registers, `LANES`. `ivs(s)` gives segment `s`'s inner and outer IVs. Returns how
/// many segments it sealed; [`seal_rest`] seals the rest.
pub(super) fn seal_groups(
    outer: &Keys,
    inner: &Keys,
    buf: &mut [u8],
    mut ivs: impl FnMut(usize) -> ([u8; 16], [u8; 16]),
) -> usize {
    let mut done = 0;
    let mut lane_ivs = |first: usize, iv_in: &mut [[u8; 16]], iv_out: &mut [[u8; 16]]| {
        for (l, (i, o)) in iv_in.iter_mut().zip(iv_out.iter_mut()).enumerate() {
            (*i, *o) = ivs(first + l);
        }
    };
    if outer.width >= Width::Ymm {
        for group in buf.chunks_exact_mut(WIDE * SEGMENT) {
            let (mut iv_in, mut iv_out) = ([[0; 16]; WIDE], [[0; 16]; WIDE]);
            lane_ivs(done, &mut iv_in, &mut iv_out);
            if outer.width == Width::Zmm {
                // SAFETY: `Zmm` is set only once VAES, AVX2 and AVX-512F have been detected.
                unsafe { seal_zmm(outer, inner, group, iv_in, iv_out) };
            } else {
                // SAFETY: `Ymm` is set only once VAES and AVX2 have been detected.
                unsafe { seal_wide(outer, inner, group, iv_in, iv_out) };
            }
            done += WIDE;
        }
    }
    if outer.width == Width::Zmm {
        // Fewer than sixteen left: `seal_rest` takes them on 512-bit registers.
        return done;
    }
    for group in buf[done * SEGMENT..].chunks_exact_mut(LANES * SEGMENT) {
        let (mut iv_in, mut iv_out) = ([[0; 16]; LANES], [[0; 16]; LANES]);
        lane_ivs(done, &mut iv_in, &mut iv_out);
        // SAFETY: a `Keys` exists only once AES-NI has been detected (`Keys::new`).
        unsafe { seal(outer, inner, group, iv_in, iv_out) };
        done += LANES;
    }
    done
}

/// Seals, in place, what [`seal_groups`] leaves of a buffer: fewer whole segments than a group
/// and a shorter last one, a lane each, in the same lockstep (`ivs(l)` gives lane `l`'s IVs).
/// Small files and the last batch of most chunks end this way. Through the `aes` crate, calls
/// of 100 kB (six whole segments and a part) sealed at 1.6-2.3 GB/s per core, against 7.6-8.5
/// for whole batches; on 128-bit registers here at 2.7-2.8, on 512-bit ones at 4.9-5.6
/// (BENCHMARKS.md, round 11).
///
/// A lane that is absent, or has ended, runs on zeros and is not stored. With few lanes the
/// rounds wait on each other's latency, not on the AES units, so the registers are as many as
/// the lanes need: two, four or eight 128-bit ones, or one, two or four 512-bit ones of four
/// lanes each (up to sixteen lanes: with 512-bit registers `seal_groups` leaves fewer than
/// sixteen whole segments, below them fewer than `LANES`).
pub(super) fn seal_rest(
    outer: &Keys,
    inner: &Keys,
    rest: &mut [u8],
    mut ivs: impl FnMut(usize) -> ([u8; 16], [u8; 16]),
) {
    let lanes = rest.len().div_ceil(SEGMENT);
    let zmm = outer.width == Width::Zmm;
    assert!(
        lanes <= if zmm { WIDE } else { LANES },
        "seal_groups took every whole group"
    );
    assert!(
        rest.len().is_multiple_of(BLOCK),
        "sealed data is whole blocks"
    );
    let (mut iv_in, mut iv_out) = ([[0; 16]; WIDE], [[0; 16]; WIDE]);
    for l in 0..lanes {
        (iv_in[l], iv_out[l]) = ivs(l);
    }
    if zmm {
        // SAFETY: `Zmm` is set only once VAES, AVX2 and AVX-512F have been detected.
        unsafe {
            match lanes {
                0 => {}
                1..=4 => seal_rest_z1(outer, inner, rest, iv_in, iv_out),
                5..=8 => seal_rest_z2(outer, inner, rest, iv_in, iv_out),
                _ => seal_rest_z4(outer, inner, rest, iv_in, iv_out),
            }
        }
        return;
    }
    // SAFETY: a `Keys` exists only once AES-NI has been detected (`Keys::new`).
    unsafe {
        match lanes {
            0 => {}
            1..=2 => seal_rest2(outer, inner, rest, iv_in, iv_out),
            3..=4 => seal_rest4(outer, inner, rest, iv_in, iv_out),
            _ => seal_rest8(outer, inner, rest, iv_in, iv_out),
        }
    }
}

/// Defines [`seal_rest`]'s loop once per `name: [...]`, on the registers named, `$per` lanes
/// to a register (lanes `$per * m` to `$per * m + $per - 1` in register `m`, as in
/// [`seal_zmm`]), gathered with `$join` and scattered a block at a time. `$reg` is the
/// register type, `$features` the CPU features the loop needs, `$widen` puts a round key in
/// every block of a register, `$xor` XORs two registers, and `$rounds!` runs the rounds,
/// `$round` and `$last`.
macro_rules! seal_rest_on {
    ($features:literal, $reg:ty, $per:literal, $widen:ident, $join:ident, $xor:ident,
     $rounds:ident, $round:literal, $last:literal, $($name:ident: [$($b:ident),+]),+) => {$(
        #[target_feature(enable = $features)]
        fn $name(
            outer: &Keys,
            inner: &Keys,
            rest: &mut [u8],
            iv_in: [[u8; 16]; WIDE],
            iv_out: [[u8; 16]; WIDE],
        ) {
            const R: usize = [$(stringify!($b)),+].len();
            const ROWS: usize = SEGMENT / BLOCK;
            let blocks = rest.len() / BLOCK;
            // Lane `l`'s length in blocks: every lane but the last is a whole segment, so
            // lane 0 is the longest.
            let len: [usize; WIDE] =
                std::array::from_fn(|l| blocks.saturating_sub(l * ROWS).min(ROWS));
            let (inner_enc, outer_enc) = ($widen(&inner.enc), $widen(&outer.enc));
            // Register `m` of IVs: lanes `$per * m` on.
            let ivs = |iv: &[[u8; 16]; WIDE], m: usize| {
                $join(std::array::from_fn(|q| to_reg(iv[$per * m + q])))
            };
            let mut prev_in: [$reg; R] = std::array::from_fn(|m| ivs(&iv_in, m));
            let mut prev_out: [$reg; R] = std::array::from_fn(|m| ivs(&iv_out, m));
            let zero = to_reg([0; 16]);
            for r in 0..len[0] {
                let mut x = prev_in;
                for (m, b) in x.iter_mut().enumerate() {
                    let plain = $join(std::array::from_fn(|q| {
                        let l = $per * m + q;
                        if r < len[l] { load(rest, l * ROWS + r) } else { zero }
                    }));
                    *b = $xor(plain, *b);
                }
                prev_in = $rounds!(inner_enc, x, [$($b),+], $round, $last);
                for ((b, i), o) in x.iter_mut().zip(prev_in).zip(prev_out) {
                    *b = $xor(i, o);
                }
                prev_out = $rounds!(outer_enc, x, [$($b),+], $round, $last);
                for (m, b) in prev_out.iter().enumerate() {
                    let sealed: [u8; $per * BLOCK] = bytemuck::cast(*b);
                    for (q, block) in sealed.chunks_exact(BLOCK).enumerate() {
                        let l = $per * m + q;
                        if r < len[l] {
                            rest[(l * ROWS + r) * BLOCK..][..BLOCK].copy_from_slice(block);
                        }
                    }
                }
            }
        }
    )+};
}

seal_rest_on!("aes", __m128i, 1, widen1, join1, _mm_xor_si128, rounds_xmm, "aesenc",
    "aesenclast", seal_rest2: [b0, b1], seal_rest4: [b0, b1, b2, b3],
    seal_rest8: [b0, b1, b2, b3, b4, b5, b6, b7]);
seal_rest_on!("aes,avx512f,vaes", __m512i, 4, widen4, join4, _mm512_xor_si512, rounds_zmm,
    "vaesenc", "vaesenclast", seal_rest_z1: [b0], seal_rest_z2: [b0, b1],
    seal_rest_z4: [b0, b1, b2, b3]);

/// [`seal`] with VAES: sixteen lanes, lanes `2m` and `2m + 1` in the two halves of register
/// `m`.
///
/// The lanes are whole segments, 16 KiB apart, so the same block of every lane falls in the
/// same set of the L1 cache, which holds eight lines per set: reading and writing a row in
/// place, the sixteen lanes evicted each other's lines on every row, and the stores alone took
/// about half of the samples (perf annotate), with sealing no faster than [`seal`]. Rows are
/// therefore copied sixteen at a time, 256 bytes of each lane, into `tile` on the stack and
/// back.
#[target_feature(enable = "aes,avx2,vaes")]
fn seal_wide(
    outer: &Keys,
    inner: &Keys,
    group: &mut [u8],
    iv_in: [[u8; 16]; WIDE],
    iv_out: [[u8; 16]; WIDE],
) {
    /// Rows per tile: 256 bytes of each lane, 4 KiB in all. Four rows (a cache line per lane)
    /// sealed at 3.5-3.8 GB/s, sixteen at 4.25-4.34, sixty-four no faster (BENCHMARKS.md,
    /// round 7).
    const TILE: usize = 16;
    let (inner_enc, outer_enc) = (widen(&inner.enc), widen(&outer.enc));
    let pair = |ivs: &[[u8; 16]; WIDE], m: usize| {
        _mm256_set_m128i(to_reg(ivs[2 * m + 1]), to_reg(ivs[2 * m]))
    };
    let mut prev_in: [__m256i; 8] = std::array::from_fn(|m| pair(&iv_in, m));
    let mut prev_out: [__m256i; 8] = std::array::from_fn(|m| pair(&iv_out, m));
    let mut tile = [[0u8; TILE * BLOCK]; WIDE];
    for at in (0..SEGMENT).step_by(TILE * BLOCK) {
        for (l, t) in tile.iter_mut().enumerate() {
            t.copy_from_slice(&group[l * SEGMENT + at..][..TILE * BLOCK]);
        }
        for r in 0..TILE {
            let mut x = prev_in;
            for (m, b) in x.iter_mut().enumerate() {
                let row = _mm256_set_m128i(load(&tile[2 * m + 1], r), load(&tile[2 * m], r));
                *b = _mm256_xor_si256(row, *b);
            }
            prev_in = rounds16!(inner_enc, x, "vaesenc", "vaesenclast");
            for ((b, i), o) in x.iter_mut().zip(prev_in).zip(prev_out) {
                *b = _mm256_xor_si256(i, o);
            }
            prev_out = rounds16!(outer_enc, x, "vaesenc", "vaesenclast");
            for (m, b) in prev_out.iter().enumerate() {
                store(&mut tile[2 * m], r, _mm256_castsi256_si128(*b));
                store(&mut tile[2 * m + 1], r, _mm256_extracti128_si256::<1>(*b));
            }
        }
        for (l, t) in tile.iter().enumerate() {
            group[l * SEGMENT + at..][..TILE * BLOCK].copy_from_slice(t);
        }
    }
}

/// [`seal_wide`] on 512-bit registers: the same sixteen lanes, lanes `4m` to `4m + 3` in the
/// four quarters of register `m`, with row `r + 1` of the inner layer running beside row `r` of
/// the outer one.
///
/// The tile is transposed: its row `r` holds block `r` of each lane, in lane order, so that a
/// register is one 64-byte load and one store. Gathering a register from four lanes' rows
/// instead (inserts and extracts, which likely compete with the AES instructions for the vector
/// units) sealed at 7.2-7.3 GB/s, the transposed tile at 8.1-8.5 with sixteen rows and 8.6-9.0
/// with sixty-four; more rows were slower (8.0-8.1 with 128 rows, 32 KiB of the 48 KiB L1
/// cache; 5.4 with 256), BENCHMARKS.md, round 10.
#[target_feature(enable = "aes,avx512f,vaes")]
fn seal_zmm(
    outer: &Keys,
    inner: &Keys,
    group: &mut [u8],
    iv_in: [[u8; 16]; WIDE],
    iv_out: [[u8; 16]; WIDE],
) {
    /// Rows per tile: 1 KiB of each lane, 16 KiB in all.
    const TILE: usize = 64;
    let (inner_enc, outer_enc) = (widen4(&inner.enc), widen4(&outer.enc));
    let quad =
        |ivs: &[[u8; 16]; WIDE], m: usize| join4(std::array::from_fn(|q| to_reg(ivs[4 * m + q])));
    let mut prev_in: [__m512i; 4] = std::array::from_fn(|m| quad(&iv_in, m));
    let mut prev_out: [__m512i; 4] = std::array::from_fn(|m| quad(&iv_out, m));
    // Row `r` of a tile is block `r` of every lane, in lane order: register `m` of a row is
    // four blocks side by side.
    let mut tile = [[0u8; WIDE * BLOCK]; TILE];
    for at in (0..SEGMENT).step_by(TILE * BLOCK) {
        for l in 0..WIDE {
            let lane = &group[l * SEGMENT + at..][..TILE * BLOCK];
            for (row, block) in tile.iter_mut().zip(lane.chunks_exact(BLOCK)) {
                row[l * BLOCK..][..BLOCK].copy_from_slice(block);
            }
        }
        for row in tile.iter_mut() {
            let mut x = prev_in;
            for (m, b) in x.iter_mut().enumerate() {
                *b = _mm512_xor_si512(load4(row, m), *b);
            }
            prev_in = rounds16z!(inner_enc, x, "vaesenc", "vaesenclast");
            for ((b, i), o) in x.iter_mut().zip(prev_in).zip(prev_out) {
                *b = _mm512_xor_si512(i, o);
            }
            prev_out = rounds16z!(outer_enc, x, "vaesenc", "vaesenclast");
            for (m, b) in prev_out.iter().enumerate() {
                store4(row, m, *b);
            }
        }
        for l in 0..WIDE {
            let lane = &mut group[l * SEGMENT + at..][..TILE * BLOCK];
            for (row, block) in tile.iter().zip(lane.chunks_exact_mut(BLOCK)) {
                block.copy_from_slice(&row[l * BLOCK..][..BLOCK]);
            }
        }
    }
}

/// Seals `LANES` whole segments in place with AES-NI, each lane with its own IVs.
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
    match outer.width {
        // SAFETY: `Zmm` is set only once VAES, AVX2 and AVX-512F have been detected.
        Width::Zmm => unsafe { open_zmm(outer, inner, seg, iv_out, iv_in) },
        // SAFETY: `Ymm` is set only once VAES and AVX2 have been detected (`Keys::new`).
        Width::Ymm => unsafe { open_wide(outer, inner, seg, iv_out, iv_in) },
        // SAFETY: a `Keys` exists only once AES-NI has been detected (`Keys::new`).
        Width::Xmm => unsafe { open(outer, inner, seg, iv_out, iv_in) },
    }
}

/// The loop of [`open_wide`] and [`open_zmm`]: opens `$seg` in place, `$blocks` blocks at a
/// time in eight registers (`$load` and `$store` move register `j`'s blocks, `$rounds` is the
/// width's rounds, `$chained` XORs each block with the one before it and returns the last),
/// carrying both layers' chains in `$prev_out` and `$prev_in`. Returns the rest of the
/// segment, fewer than `$blocks` blocks, for the next narrower path.
macro_rules! open_groups {
    ($seg:expr, $blocks:expr, $load:ident, $store:ident, $rounds:ident, $outer:expr, $inner:expr,
     $chained:expr, $prev_out:ident, $prev_in:ident) => {{
        let mut groups = $seg.chunks_exact_mut($blocks * BLOCK);
        for group in &mut groups {
            let sealed = std::array::from_fn(|j| $load(group, j));
            let mut mid = $rounds!($outer, sealed, "vaesdec", "vaesdeclast");
            $prev_out = $chained(&mut mid, &sealed, $prev_out);
            let mut plain = $rounds!($inner, mid, "vaesdec", "vaesdeclast");
            $prev_in = $chained(&mut plain, &mid, $prev_in);
            for (j, p) in plain.iter().enumerate() {
                $store(group, j, *p);
            }
        }
        groups.into_remainder()
    }};
}

/// [`open`] with VAES: sixteen blocks at a time, blocks `2j` and `2j + 1` in the two halves
/// of register `j`; the rest of the segment (fewer than sixteen blocks) takes [`open`].
#[target_feature(enable = "aes,avx2,vaes")]
fn open_wide(outer: &Keys, inner: &Keys, seg: &mut [u8], iv_out: [u8; 16], iv_in: [u8; 16]) {
    let (outer_dec, inner_dec) = (widen(&outer.dec), widen(&inner.dec));
    let mut prev_out = to_reg(iv_out);
    let mut prev_in = to_reg(iv_in);
    // Each block's chain value is the block before it: for register `j`, the high half of
    // register `j - 1` and the low half of register `j`, or `prev` for the first.
    let chained = |x: &mut [__m256i; 8], before: &[__m256i; 8], prev: __m128i| {
        x[0] = _mm256_xor_si256(
            x[0],
            _mm256_set_m128i(_mm256_castsi256_si128(before[0]), prev),
        );
        for j in 1..8 {
            x[j] = _mm256_xor_si256(
                x[j],
                _mm256_permute2x128_si256::<0x21>(before[j - 1], before[j]),
            );
        }
        _mm256_extracti128_si256::<1>(before[7])
    };
    let rest = open_groups!(
        seg, WIDE, load2, store2, rounds16, outer_dec, inner_dec, chained, prev_out, prev_in
    );
    open(outer, inner, rest, from_reg(prev_out), from_reg(prev_in));
}

/// [`open_wide`] on 512-bit registers: thirty-two blocks at a time, blocks `4j` to `4j + 3` in
/// the quarters of register `j`; the rest of the segment (fewer than thirty-two blocks) takes
/// [`open_wide`].
#[target_feature(enable = "aes,avx512f,vaes")]
fn open_zmm(outer: &Keys, inner: &Keys, seg: &mut [u8], iv_out: [u8; 16], iv_in: [u8; 16]) {
    const BLOCKS: usize = 32;
    let (outer_dec, inner_dec) = (widen4(&outer.dec), widen4(&inner.dec));
    let mut prev_out = to_reg(iv_out);
    let mut prev_in = to_reg(iv_in);
    // Each block's chain value is the block before it: for register `j`, the last quarter of
    // register `j - 1` (or `prev` for the first) and the first three of register `j`.
    // `alignr::<6>(a, b)` is the last two 64-bit words of `b`, then the first six of `a`.
    let chained = |x: &mut [__m512i; 8], before: &[__m512i; 8], prev: __m128i| {
        x[0] = _mm512_xor_si512(
            x[0],
            _mm512_alignr_epi64::<6>(before[0], _mm512_broadcast_i32x4(prev)),
        );
        for j in 1..8 {
            x[j] = _mm512_xor_si512(x[j], _mm512_alignr_epi64::<6>(before[j], before[j - 1]));
        }
        _mm512_extracti32x4_epi32::<3>(before[7])
    };
    let rest = open_groups!(
        seg, BLOCKS, load4, store4, rounds32, outer_dec, inner_dec, chained, prev_out, prev_in
    );
    open_wide(outer, inner, rest, from_reg(prev_out), from_reg(prev_in));
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
    Keys {
        enc,
        dec,
        width: Width::Xmm,
    }
}

/// `w0, w0^w1, w0^w1^w2, w0^w1^w2^w3` of the four words of `a`: the running XOR of the key
/// schedule.
#[inline]
#[target_feature(enable = "aes")]
fn spread(a: __m128i) -> __m128i {
    let a = _mm_xor_si128(a, _mm_slli_si128::<4>(a));
    _mm_xor_si128(a, _mm_slli_si128::<8>(a))
}

/// Each round key in both halves of a 256-bit register, for [`rounds16`].
#[inline]
#[target_feature(enable = "avx2,vaes")]
fn widen(keys: &[__m128i; 15]) -> [__m256i; 15] {
    keys.map(|k| _mm256_broadcastsi128_si256(k))
}

/// Each round key in all four quarters of a 512-bit register, for [`rounds32`] and
/// [`rounds16z`].
#[inline]
#[target_feature(enable = "avx512f")]
fn widen4(keys: &[__m128i; 15]) -> [__m512i; 15] {
    keys.map(|k| _mm512_broadcast_i32x4(k))
}

/// The round keys as they are: a 128-bit register holds one block ([`seal_rest_on`]).
#[inline(always)]
fn widen1(keys: &[__m128i; 15]) -> [__m128i; 15] {
    *keys
}

/// One block in its own register: [`join4`] for 128-bit registers ([`seal_rest_on`]).
#[inline(always)]
fn join1([a]: [__m128i; 1]) -> __m128i {
    a
}

/// Four blocks in the quarters of one 512-bit register, the first lowest.
#[inline]
#[target_feature(enable = "avx512f")]
fn join4([a, b, c, d]: [__m128i; 4]) -> __m512i {
    let v = _mm512_inserti32x4::<1>(_mm512_castsi128_si512(a), b);
    _mm512_inserti32x4::<3>(_mm512_inserti32x4::<2>(v, c), d)
}

/// Blocks `4j` to `4j + 3` of `buf`.
#[inline(always)]
fn load4(buf: &[u8], j: usize) -> __m512i {
    bytemuck::cast::<[u8; 64], __m512i>(buf[j * 4 * BLOCK..][..4 * BLOCK].try_into().unwrap())
}

#[inline(always)]
fn store4(buf: &mut [u8], j: usize, b: __m512i) {
    buf[j * 4 * BLOCK..][..4 * BLOCK].copy_from_slice(&bytemuck::cast::<__m512i, [u8; 64]>(b));
}

#[inline(always)]
fn from_reg(b: __m128i) -> [u8; 16] {
    bytemuck::cast(b)
}

/// Blocks `2j` and `2j + 1` of `buf`.
#[inline(always)]
fn load2(buf: &[u8], j: usize) -> __m256i {
    bytemuck::cast::<[u8; 32], __m256i>(buf[j * 2 * BLOCK..][..2 * BLOCK].try_into().unwrap())
}

#[inline(always)]
fn store2(buf: &mut [u8], j: usize, b: __m256i) {
    buf[j * 2 * BLOCK..][..2 * BLOCK].copy_from_slice(&bytemuck::cast::<__m256i, [u8; 32]>(b));
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
    buf[j * BLOCK..][..BLOCK].copy_from_slice(&from_reg(b));
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
    /// The VAES paths, on 256-bit registers and on 512-bit ones where this CPU has them, give
    /// the bytes of the AES-NI ones, sealing whole groups (sixteen lanes, then eight) and
    /// opening segments of any number of blocks (the 512-bit path's groups of thirty-two, the
    /// 256-bit one's of sixteen, and the rest).
    #[test]
    fn vaes_paths_equal_the_aes_ni_ones() {
        let (Some(outer), Some(inner)) = (Keys::new(&[3; 32]), Keys::new(&[5; 32])) else {
            eprintln!("no AES-NI on this CPU: nothing to compare");
            return;
        };
        let widths: Vec<Width> = [Width::Ymm, Width::Zmm]
            .into_iter()
            .filter(|w| *w <= outer.width())
            .collect();
        if widths.is_empty() {
            eprintln!("no VAES on this CPU: nothing to compare");
            return;
        }
        let (outer_n, inner_n) = (outer.capped(Width::Xmm), inner.capped(Width::Xmm));
        let ivs = |s: usize| ([s as u8; 16], [!(s as u8); 16]);
        for width in widths {
            let (outer_w, inner_w) = (outer.capped(width), inner.capped(width));
            assert_eq!(outer_w.width(), width);
            // Whole groups, and what is left after them: every count of lanes up to sixteen,
            // with and without a short last one.
            let seal_all = |outer: &Keys, inner: &Keys, buf: &mut [u8]| {
                let n = seal_groups(outer, inner, buf, ivs);
                seal_rest(outer, inner, &mut buf[n * SEGMENT..], |s| ivs(n + s));
            };
            let lens = (1..=17)
                .flat_map(|segments| [segments * SEGMENT, segments * SEGMENT - 16 * 37])
                .chain([16, 24 * SEGMENT, 40 * SEGMENT, 41 * SEGMENT + 160]);
            for len in lens {
                let plain: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
                let (mut wide, mut narrow) = (plain.clone(), plain.clone());
                seal_all(&outer_w, &inner_w, &mut wide);
                seal_all(&outer_n, &inner_n, &mut narrow);
                assert_eq!(wide, narrow, "{width:?}: {len} bytes sealed");
                assert_ne!(wide, plain);
            }
            for blocks in [
                1,
                15,
                16,
                17,
                31,
                32,
                33,
                47,
                48,
                63,
                64,
                65,
                100,
                SEGMENT / BLOCK,
            ] {
                let sealed: Vec<u8> = (0..blocks * BLOCK).map(|i| (i * 31 + 1) as u8).collect();
                let (mut wide, mut narrow) = (sealed.clone(), sealed.clone());
                open_segment(&outer_w, &inner_w, &mut wide, [9; 16], [4; 16]);
                open_segment(&outer_n, &inner_n, &mut narrow, [9; 16], [4; 16]);
                assert_eq!(wide, narrow, "{width:?}: {blocks} blocks opened");
            }
        }
    }
}
