//! The two-layer cipher in memory, through chunkd's own code: `cargo bench --bench cipher`.
//!
//! `seal/256KiB` is what the upload path does per batch (16 segments, `BATCH` in
//! `src/upload.rs`); `open/128KiB` is the download path's batch. Compare with `openssl speed -evp aes-256-cbc -bytes 16384` (one layer, one
//! chain) on the same machine; `examples/bench.rs` does both in one run.

use std::hint::black_box;

use chunkd::crypto::{FileCipher, FileKeys, GlobalKey, SEGMENT};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn cipher() -> FileCipher {
    let raw: [u8; 48] = std::array::from_fn(|i| (i * 37 + 11) as u8);
    FileCipher::new(&GlobalKey::from_bytes(&raw), &FileKeys::generate())
}

fn bench(c: &mut Criterion) {
    let fc = cipher();
    let mut g = c.benchmark_group("two_layer");
    for (label, len) in [
        ("16KiB", SEGMENT),
        ("128KiB", 8 * SEGMENT),
        ("256KiB", 16 * SEGMENT),
        ("1MiB", 64 * SEGMENT),
    ] {
        let mut buf = vec![0x42u8; len];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("seal/{label}"), |b| {
            b.iter(|| fc.seal_segments(7, 3, 0, black_box(&mut buf)))
        });
        g.bench_function(format!("open/{label}"), |b| {
            b.iter(|| fc.open_segments(7, 3, 0, black_box(&mut buf)))
        });
    }
    // A chunk's last batch: a short final segment.
    let mut tail = vec![0x42u8; 3 * SEGMENT + 4096];
    g.throughput(Throughput::Bytes(tail.len() as u64));
    g.bench_function("seal/tail_52KiB", |b| {
        b.iter(|| fc.seal_segments(7, 3, 0, black_box(&mut tail)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
