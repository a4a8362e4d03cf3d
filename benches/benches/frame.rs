//! Frame codec micro-benchmarks: decode (with in-place unmasking), encode, unmask.
#![allow(missing_docs)] // criterion_group!/criterion_main! generate undocumented items

use bytes::BytesMut;
use corecast::proto::ws::frame::{encode, encode_masked, unmask, OpCode};
use corecast::proto::ws::{Decoder, Limits};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for size in [64usize, 1024, 16 * 1024] {
        let frames = 256;
        let one = encode_masked(OpCode::Binary, true, false, &vec![7u8; size], MASK);
        let stream: Vec<u8> = one
            .iter()
            .copied()
            .cycle()
            .take(one.len() * frames)
            .collect();
        g.throughput(Throughput::Elements(frames as u64));
        g.bench_with_input(
            BenchmarkId::new("binary_frames", size),
            &stream,
            |b, stream| {
                b.iter(|| {
                    let mut buf = BytesMut::from(&stream[..]);
                    let mut d = Decoder::new(Limits::default(), None);
                    let mut n = 0;
                    while let Ok(Some(m)) = d.decode(&mut buf) {
                        black_box(&m);
                        n += 1;
                    }
                    assert_eq!(n, frames);
                })
            },
        );
    }
    let text = encode_masked(
        OpCode::Text,
        true,
        false,
        "héllo wörld ".repeat(5).as_bytes(),
        MASK,
    );
    let stream: Vec<u8> = text
        .iter()
        .copied()
        .cycle()
        .take(text.len() * 256)
        .collect();
    g.throughput(Throughput::Elements(256));
    g.bench_function("text_frames_utf8_64b", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&stream[..]);
            let mut d = Decoder::new(Limits::default(), None);
            while let Ok(Some(m)) = d.decode(&mut buf) {
                black_box(&m);
            }
        })
    });
    g.finish();
}

fn encode_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for size in [64usize, 1024, 16 * 1024] {
        let payload = vec![1u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("server_frame", size), &payload, |b, p| {
            b.iter(|| black_box(encode(OpCode::Binary, false, p)))
        });
    }
    g.finish();
}

fn unmask_bytes(c: &mut Criterion) {
    let mut g = c.benchmark_group("unmask");
    for size in [64usize, 1024, 64 * 1024] {
        let mut data = vec![0xAAu8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(size), |b| {
            b.iter(|| unmask(black_box(&mut data), MASK))
        });
    }
    g.finish();
}

criterion_group!(benches, decode, encode_frames, unmask_bytes);
criterion_main!(benches);
