//! The bridge's free-lane operations: publish, fetch, queries.

use std::sync::Arc;

use corecast_shards::{ConnId, HistoryLimits, Position};

use super::ctx::{Ctx, Done, Fail, Lane};
use super::wire;
use super::FromBridge;
use super::{scripts, Answer, ClusterStats, Fetched, MemberCounts, Query};
use crate::vocab::message::AckTo;
use crate::vocab::message::Message;

/// Most presence members a query answers with.
pub(crate) const PRESENCE_MAX: usize = 10_000;

/// Who to tell about a publish's fate.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// The room.
    pub(crate) room: Arc<str>,
    /// The publishing connection.
    pub(crate) origin: Option<ConnId>,
    /// The ack (wins over `origin` for failures).
    pub(crate) ack: Option<AckTo>,
}

/// The messages that report a failed publish (and count it).
pub(crate) fn publish_failed(stats: &ClusterStats, reply: &Reply) -> Option<(usize, FromBridge)> {
    ClusterStats::add(&stats.publish_failures, 1);
    if let Some(ack) = reply.ack {
        return Some((ack.shard, FromBridge::PublishRefused { token: ack.token }));
    }
    reply.origin.map(|conn| {
        (
            usize::from(conn.shard),
            FromBridge::PublishFailed {
                conn,
                room: reply.room.clone(),
            },
        )
    })
}

/// Sequence and publish one message.
pub(crate) async fn publish(
    mut ctx: Ctx,
    reply: Reply,
    msg: Message,
    except: Option<ConnId>,
    limits: HistoryLimits,
) -> Done {
    let mut done = Done::new(&ctx, Lane::Free);
    let header = wire::encode_header(&ctx.keys.node, except, &msg, scripts::unix_micros());
    match ctx
        .publish(&reply.room, &header, msg.as_bytes(), Some(limits))
        .await
    {
        Ok(pos) => {
            ClusterStats::add(&ctx.stats.publishes, 1);
            if let Some(ack) = reply.ack {
                done.out.push((
                    ack.shard,
                    FromBridge::PublishAck {
                        token: ack.token,
                        pos,
                    },
                ));
            }
        }
        Err(f) => {
            tracing::debug!(room = %reply.room, error = %f, "cluster: publish failed");
            done.out.extend(publish_failed(&ctx.stats, &reply));
            done.fail(f);
        }
    }
    done
}

/// What a fetch is for.
pub(crate) struct FetchReq {
    /// The room.
    pub(crate) room: Arc<str>,
    /// The resuming member's cursor.
    pub(crate) since: Position,
    /// The last sequence number wanted.
    pub(crate) upto: u64,
    /// The resuming member.
    pub(crate) conn: ConnId,
    /// The shard that asked.
    pub(crate) reply_to: usize,
    /// The room's limits (age filter).
    pub(crate) limits: HistoryLimits,
}

/// Read a room's history for a resume.
pub(crate) async fn fetch(mut ctx: Ctx, req: FetchReq) -> Done {
    let mut done = Done::new(&ctx, Lane::Free);
    let fetched = match read_history(&mut ctx, &req).await {
        Ok(f) => Some(f),
        Err(f) => {
            tracing::debug!(room = %req.room, error = %f, "cluster: history fetch failed");
            done.fail(f);
            None
        }
    };
    done.out.push((
        req.reply_to,
        FromBridge::Fetched {
            room: req.room,
            conn: req.conn,
            since: req.since,
            upto: req.upto,
            fetched,
        },
    ));
    done
}

async fn read_history(ctx: &mut Ctx, req: &FetchReq) -> Result<Fetched, Fail> {
    let epoch = ctx.position(&req.room).await?.epoch;
    let from = if epoch != 0 && req.since.epoch == epoch {
        req.since.seq.saturating_add(1)
    } else {
        1
    };
    let entries = if epoch == 0 || from > req.upto {
        Vec::new()
    } else {
        ctx.xrange(&req.room, from, req.upto).await?
    };
    let oldest = scripts::unix_micros()
        .saturating_sub(u64::try_from(req.limits.max_age.as_micros()).unwrap_or(u64::MAX));
    let messages: Vec<(u64, Message)> = entries
        .into_iter()
        .filter(|e| e.header.micros >= oldest)
        .map(|e| (e.seq, e.msg))
        .collect();
    let first_available = messages.first().map_or(req.upto.saturating_add(1), |m| m.0);
    Ok(Fetched {
        epoch,
        first_available,
        messages,
    })
}

/// Answer a query.
pub(crate) async fn query(mut ctx: Ctx, token: u64, reply_to: usize, query: Query) -> Done {
    let mut done = Done::new(&ctx, Lane::Free);
    let answer = match answer(&mut ctx, query).await {
        Ok(a) => a,
        Err(f) => {
            done.fail(f);
            Answer::Unavailable
        }
    };
    done.out
        .push((reply_to, FromBridge::Answer { token, answer }));
    done
}

async fn answer(ctx: &mut Ctx, query: Query) -> Result<Answer, Fail> {
    match query {
        Query::Counts(room) => {
            let all: std::collections::BTreeMap<String, String> = ctx
                .cmd(redis::cmd("HGETALL").arg(ctx.keys.counts(&room)))
                .await?;
            let node = ctx.keys.node.clone();
            let live = ctx
                .live_nodes(all.keys().map(String::as_str).filter(|n| *n != node))
                .await?;
            Ok(Answer::Counts(
                all.into_iter()
                    .filter(|(n, _)| *n != node && live.contains(n))
                    .filter_map(|(n, v)| parse_counts(&v).map(|c| (n, c)))
                    .collect(),
            ))
        }
        Query::Presence(room) => {
            let members = ctx.live_presence(&room).await?;
            let truncated = members.len() > PRESENCE_MAX;
            let list = members
                .values()
                .filter_map(|v| serde_json::from_str(v).ok())
                .take(PRESENCE_MAX)
                .collect();
            Ok(Answer::Presence(list, truncated))
        }
        Query::SendTo { node, conn, msg } => {
            let receivers: u64 = ctx
                .cmd(
                    redis::cmd("PUBLISH")
                        .arg(ctx.keys.direct_channel(&node))
                        .arg(wire::encode_direct(conn, &msg)),
                )
                .await?;
            Ok(Answer::Sent(receivers > 0))
        }
    }
}

/// `"ws sse wt"` as written by the heartbeat.
pub(crate) fn format_counts(c: MemberCounts) -> String {
    format!("{} {} {}", c.websocket, c.sse, c.webtransport)
}

/// Parse [`format_counts`]'s output.
pub(crate) fn parse_counts(s: &str) -> Option<MemberCounts> {
    let mut it = s.split(' ').map(str::parse::<u64>);
    let c = MemberCounts {
        websocket: it.next()?.ok()?,
        sse: it.next()?.ok()?,
        webtransport: it.next()?.ok()?,
    };
    it.next().is_none().then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_trip_and_garbage_is_none() {
        let c = MemberCounts {
            websocket: 3,
            sse: 0,
            webtransport: 12,
        };
        assert_eq!(parse_counts(&format_counts(c)), Some(c));
        for bad in ["", "1 2", "1 2 3 4", "a b c", "1  2 3"] {
            assert_eq!(parse_counts(bad), None, "{bad:?}");
        }
    }
}
