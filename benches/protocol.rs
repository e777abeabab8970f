//! The parameter parser, every dialect into one `ChunkParams`: `cargo bench --bench protocol`.

use std::hint::black_box;

use chunkd::protocol::Params;
use criterion::{Criterion, criterion_group, criterion_main};

/// A chunk request as Resumable.js sends it (octet: everything in the query).
const RESUMABLE: &str = "resumableChunkNumber=17&resumableChunkSize=1048576&resumableCurrentChunkSize=1048576&resumableTotalSize=134217728&resumableType=application%2Foctet-stream&resumableIdentifier=134217728-big_iso&resumableFilename=big.iso&resumableRelativePath=dir%2Fbig.iso&resumableTotalChunks=128";
/// The same as Flow.js names it.
const FLOW: &str = "flowChunkNumber=17&flowChunkSize=1048576&flowCurrentChunkSize=1048576&flowTotalSize=134217728&flowIdentifier=134217728-big_iso&flowFilename=big.iso&flowRelativePath=dir%2Fbig.iso&flowTotalChunks=128";
/// The Twake names (the identifier comes from the route).
const TWAKE: &str = "chunk_number=17&total_chunks=128&total_size=134217728&filename=big.iso&type=application%2Foctet-stream";

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("params");
    g.bench_function("resumable_query", |b| {
        b.iter(|| {
            Params::from_query(Some(black_box(RESUMABLE)))
                .unwrap()
                .chunk(None)
                .unwrap()
        })
    });
    g.bench_function("flow_query", |b| {
        b.iter(|| {
            Params::from_query(Some(black_box(FLOW)))
                .unwrap()
                .chunk(None)
                .unwrap()
        })
    });
    g.bench_function("twake_query", |b| {
        b.iter(|| {
            Params::from_query(Some(black_box(TWAKE)))
                .unwrap()
                .chunk(Some("id".into()))
                .unwrap()
        })
    });
    // Multipart: the fields come from the form, and the query repeats them (Resumable.js).
    let form: Vec<(String, String)> = chunkd::protocol::parse_query(RESUMABLE)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    g.bench_function("resumable_form_and_query", |b| {
        b.iter(|| {
            let mut p = Params::from_query(Some(black_box(RESUMABLE))).unwrap();
            p.form = form.clone();
            p.chunk(None).unwrap()
        })
    });
    g.bench_function("probe_identifier_only", |b| {
        b.iter(|| {
            Params::from_query(Some(black_box(RESUMABLE)))
                .unwrap()
                .identifier()
                .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
