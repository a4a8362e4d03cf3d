//! The heartbeat: this node's liveness key and member counts, and reaping of
//! nodes that stopped heartbeating (their counts and presence members go, with
//! `leave` events published by the reaper).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::ctx::{Ctx, Done, Fail, Lane};
use super::keys::node_of_field;
use super::ops::format_counts;
use super::presence::remove_members;
use super::{ClusterStats, MemberCounts};
use crate::config::valid_node_id as config_node_id_ok;

/// One room's counts to write.
#[derive(Debug, Clone)]
pub(crate) struct CountWrite {
    /// The room.
    pub(crate) room: Arc<str>,
    /// This node's members of it (all shards).
    pub(crate) counts: MemberCounts,
    /// Whether this node has presence members in it (keeps it in the node's rooms).
    pub(crate) presence: bool,
}

/// Refresh liveness and write changed counts (reaping runs on its own, so a long
/// reap never delays this node's own liveness).
pub(crate) async fn beat(mut ctx: Ctx, node_timeout: Duration, writes: Vec<CountWrite>) -> Done {
    let mut done = Done::new(
        &ctx,
        Lane::Heartbeat {
            redo: Vec::new(),
            readded: false,
        },
    );
    match write(&mut ctx, node_timeout, &writes).await {
        Ok(readded) => {
            done.lane = Lane::Heartbeat {
                redo: Vec::new(),
                readded,
            }
        }
        Err(f) => {
            done.lane = Lane::Heartbeat {
                redo: writes.into_iter().map(|w| w.room).collect(),
                readded: false,
            };
            done.fail(f);
            return done;
        }
    }
    done
}

/// Reap the nodes whose liveness key expired.
pub(crate) async fn reap_dead(mut ctx: Ctx, node_timeout: Duration) -> Done {
    let mut done = Done::new(&ctx, Lane::Reap);
    if let Err(f) = reap(&mut ctx, node_timeout).await {
        tracing::warn!(error = %f, "cluster: reaping dead nodes failed");
        done.fail(f);
    }
    done
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Whether this node had to be added back to the node set.
async fn write(ctx: &mut Ctx, node_timeout: Duration, writes: &[CountWrite]) -> Result<bool, Fail> {
    let k = ctx.keys.clone();
    let mut p = redis::pipe();
    p.cmd("SET")
        .arg(k.node_alive(&k.node))
        .arg(super::scripts::unix_micros() / 1000)
        .arg("PX")
        .arg(millis(node_timeout))
        .ignore()
        .cmd("SADD")
        .arg(k.nodes())
        .arg(&k.node);
    for w in writes {
        if w.counts.total() > 0 {
            p.cmd("HSET")
                .arg(k.counts(&w.room))
                .arg(&k.node)
                .arg(format_counts(w.counts))
                .ignore()
                .cmd("SADD")
                .arg(k.node_rooms(&k.node))
                .arg(&*w.room)
                .ignore();
        } else {
            p.cmd("HDEL").arg(k.counts(&w.room)).arg(&k.node).ignore();
            if !w.presence {
                p.cmd("SREM")
                    .arg(k.node_rooms(&k.node))
                    .arg(&*w.room)
                    .ignore();
            }
        }
    }
    let (added,): (u64,) = ctx.pipe(&p).await?;
    Ok(added == 1)
}

/// Remove every node in `P:nodes` whose liveness key has expired (one reaper per
/// dead node, by lock).
async fn reap(ctx: &mut Ctx, node_timeout: Duration) -> Result<(), Fail> {
    let k = ctx.keys.clone();
    let nodes: Vec<String> = ctx.cmd(redis::cmd("SMEMBERS").arg(k.nodes())).await?;
    let others: Vec<&str> = nodes
        .iter()
        .map(String::as_str)
        .filter(|n| *n != k.node)
        .collect();
    if others.is_empty() {
        return Ok(());
    }
    let live = ctx.live_nodes(others.iter().copied()).await?;
    for dead in others.into_iter().filter(|n| !live.contains(*n)) {
        if !config_node_id_ok(dead) {
            // Not a node id this software writes: drop it from the set.
            ctx.cmd::<()>(redis::cmd("SREM").arg(k.nodes()).arg(dead))
                .await?;
            continue;
        }
        let locked: Option<String> = ctx
            .cmd(
                redis::cmd("SET")
                    .arg(k.reap_lock(dead))
                    .arg(&k.node)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis(node_timeout)),
            )
            .await?;
        if locked.is_none() {
            continue;
        }
        tracing::info!(node = dead, "cluster: reaping a dead node's members");
        let rooms: Vec<String> = ctx
            .cmd(redis::cmd("SMEMBERS").arg(k.node_rooms(dead)))
            .await?;
        for room in rooms {
            ctx.cmd::<()>(redis::cmd("HDEL").arg(k.counts(&room)).arg(dead))
                .await?;
            let all: BTreeMap<String, String> = ctx
                .cmd(redis::cmd("HGETALL").arg(k.presence(&room)))
                .await?;
            let gone: BTreeMap<String, String> = all
                .into_iter()
                .filter(|(f, _)| node_of_field(f) == Some(dead))
                .collect();
            remove_members(ctx, &room, gone).await?;
        }
        let mut p = redis::pipe();
        p.cmd("DEL")
            .arg(k.node_rooms(dead))
            .ignore()
            .cmd("SREM")
            .arg(k.nodes())
            .arg(dead)
            .ignore();
        ctx.pipe::<()>(&p).await?;
        ClusterStats::add(&ctx.stats.nodes_reaped, 1);
    }
    Ok(())
}
