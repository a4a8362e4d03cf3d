//! One-shard fan-out micro-benchmark: the per-member cost of a broadcast (encode
#![allow(missing_docs)] // criterion_group!/criterion_main! generate undocumented items
//! once, refcount + queue push per member) and the writer's gather of queued frames
//! into one send buffer.

use std::sync::Arc;

use bytes::Bytes;
use corecast::proto::ws::frame::{encode, OpCode};
use corecast_shards::{OutboundQueue, RoomTable};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout_one_shard");
    for members in [1_000usize, 10_000] {
        let room: Arc<str> = Arc::from("bench");
        let mut table: RoomTable<u32, usize> = RoomTable::default();
        for m in 0..members {
            table.join(&room, m as u32, m);
        }
        let mut queues: Vec<OutboundQueue> =
            (0..members).map(|_| OutboundQueue::new(1 << 20)).collect();
        let payload = [b'x'; 64];
        g.throughput(Throughput::Elements(members as u64));
        g.bench_function(BenchmarkId::new("deliver_64b", members), |b| {
            b.iter(|| {
                let frame = encode(OpCode::Text, false, &payload);
                for (_, idx) in table.members("bench").expect("room").iter() {
                    let q = &mut queues[*idx];
                    if q.push(frame.clone()).is_err() {
                        q.clear();
                    }
                }
                // Drain so queues stay small: the writer's consume of one frame.
                for q in queues.iter_mut() {
                    let n = q.len_bytes();
                    black_box(q.consume(n));
                }
            })
        });
    }
    g.finish();
}

fn gather(c: &mut Criterion) {
    let mut g = c.benchmark_group("writer_gather");
    for frames in [1usize, 32] {
        let frame: Bytes = encode(OpCode::Text, false, &[b'y'; 64]);
        let mut q = OutboundQueue::new(1 << 20);
        let mut scratch = Vec::with_capacity(64 * 1024);
        g.throughput(Throughput::Elements(frames as u64));
        g.bench_function(BenchmarkId::new("frames_64b", frames), |b| {
            b.iter(|| {
                for _ in 0..frames {
                    let _ = q.push(frame.clone());
                }
                scratch.clear();
                for f in q.frames() {
                    scratch.extend_from_slice(f);
                }
                let n = scratch.len();
                black_box(&scratch);
                q.consume(n)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, fanout, gather);
criterion_main!(benches);
