//! Presence across nodes: `P:room:R:presence` holds every node's members
//! ("N|conn" -> member JSON); join and leave events are room messages published
//! through the script, so they are in the room's order on every node.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use corecast_shards::ConnId;
use serde_json::{json, Value};

use super::ctx::{Ctx, Done, Fail, Lane};
use super::keys::node_of_field;
use crate::cluster::FromBridge;
use crate::vocab::message::Message;
use crate::vocab::registry::{member_event, snapshot_event};

/// A member joined: record it, send it the snapshot, then (next step, after the
/// snapshot is on its way) publish the `join` event.
pub(crate) async fn join(mut ctx: Ctx, room: Arc<str>, member_id: ConnId, member: Value) -> Done {
    let mut done = Done::new(&ctx, Lane::Serial);
    match snapshot(&mut ctx, &room, member_id, &member).await {
        Ok((snapshot, count)) => {
            done.out.push((
                usize::from(member_id.shard),
                FromBridge::SendTo {
                    to: member_id,
                    msg: Message::text(snapshot.to_string()),
                },
            ));
            let event = member_event("join", &room, member, count);
            done.next = Some(Box::pin(publish_event(ctx, room, event)));
        }
        Err(f) => done.fail(f),
    }
    done
}

async fn snapshot(
    ctx: &mut Ctx,
    room: &str,
    member_id: ConnId,
    member: &Value,
) -> Result<(Value, usize), Fail> {
    let mut p = redis::pipe();
    p.cmd("HSET")
        .arg(ctx.keys.presence(room))
        .arg(ctx.keys.presence_field(member_id))
        .arg(member.to_string())
        .ignore()
        .cmd("SADD")
        .arg(ctx.keys.node_rooms(&ctx.keys.node))
        .arg(room)
        .ignore();
    ctx.pipe::<()>(&p).await?;
    let members = ctx.live_presence(room).await?;
    let count = members.len();
    let listed = members
        .values()
        .filter_map(|v| serde_json::from_str(v).ok());
    let snapshot = snapshot_event(room, listed, count);
    Ok((snapshot, count))
}

async fn publish_event(mut ctx: Ctx, room: Arc<str>, event: Value) -> Done {
    let mut done = Done::new(&ctx, Lane::Serial);
    if let Err(f) = ctx.publish_event(&room, &event).await {
        tracing::warn!(room = %room, error = %f, "cluster: presence event not published");
        done.fail(f);
    }
    done
}

/// A member left: forget it and publish `leave` (`local`: the member as this node
/// knew it, in case Redis lost it).
pub(crate) async fn leave(
    mut ctx: Ctx,
    room: Arc<str>,
    member_id: ConnId,
    local: Option<Value>,
) -> Done {
    let mut done = Done::new(&ctx, Lane::Serial);
    if let Err(f) = leave_inner(&mut ctx, &room, member_id, local).await {
        done.fail(f);
    }
    done
}

async fn leave_inner(
    ctx: &mut Ctx,
    room: &str,
    member_id: ConnId,
    local: Option<Value>,
) -> Result<(), Fail> {
    let field = ctx.keys.presence_field(member_id);
    let mut p = redis::pipe();
    p.cmd("HGET")
        .arg(ctx.keys.presence(room))
        .arg(&field)
        .cmd("HDEL")
        .arg(ctx.keys.presence(room))
        .arg(&field)
        .ignore();
    let (stored,): (Option<String>,) = ctx.pipe(&p).await?;
    let member = stored
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .or(local);
    let Some(member) = member else {
        return Ok(());
    };
    let count = ctx.live_presence(room).await?.len();
    let event = member_event("leave", room, member, count);
    ctx.publish_event(room, &event).await.map(|_| ())
}

/// Remove `fields` (all of dead or departed members) from `room`'s presence and
/// publish a `leave` for each; `count` is the live members left.
pub(crate) async fn remove_members(
    ctx: &mut Ctx,
    room: &str,
    fields: BTreeMap<String, String>,
) -> Result<(), Fail> {
    if fields.is_empty() {
        return Ok(());
    }
    let mut c = redis::cmd("HDEL");
    c.arg(ctx.keys.presence(room));
    for f in fields.keys() {
        c.arg(f);
    }
    ctx.cmd::<()>(&c).await?;
    let count = ctx.live_presence(room).await?.len();
    // One leave event per member, each with the count as it stands after that
    // member left (the last one's is the count now).
    let n = fields.len();
    let events: Vec<Value> = fields
        .into_iter()
        .enumerate()
        .map(|(i, (field, member))| {
            let member = serde_json::from_str::<Value>(&member).unwrap_or_else(
                |_| json!({"id": field, "node": node_of_field(&field).unwrap_or("")}),
            );
            member_event("leave", room, member, count + (n - 1 - i))
        })
        .collect();
    ctx.publish_events(room, &events).await
}

/// [`reconcile`] as a serial-lane job.
pub(crate) async fn reconcile_job(
    mut ctx: Ctx,
    local: HashMap<Arc<str>, HashMap<ConnId, Value>>,
) -> Done {
    let mut done = Done::new(&ctx, Lane::Serial);
    if let Err(f) = reconcile(&mut ctx, &local).await {
        done.fail(f);
    }
    done
}

/// After (re)connecting: make Redis hold exactly this node's members: rewrite
/// the ones it lost, remove (with `leave` events) the ones this node no longer
/// has (left while Redis was unreachable, or from before a restart).
pub(crate) async fn reconcile(
    ctx: &mut Ctx,
    local: &HashMap<Arc<str>, HashMap<ConnId, Value>>,
) -> Result<Vec<String>, Fail> {
    let node = ctx.keys.node.clone();
    let recorded: Vec<String> = ctx
        .cmd(redis::cmd("SMEMBERS").arg(ctx.keys.node_rooms(&node)))
        .await?;
    let mut rooms: Vec<String> = recorded.clone();
    rooms.extend(local.keys().map(|r| r.to_string()));
    rooms.sort();
    rooms.dedup();
    for room in &rooms {
        let all: BTreeMap<String, String> = ctx
            .cmd(redis::cmd("HGETALL").arg(ctx.keys.presence(room)))
            .await?;
        let mine = local.get(room.as_str());
        let stale: BTreeMap<String, String> = all
            .iter()
            .filter(|(f, _)| node_of_field(f) == Some(node.as_str()))
            .filter(|(f, _)| {
                let conn = f
                    .split_once('|')
                    .and_then(|(_, c)| c.parse::<ConnId>().ok());
                !conn.is_some_and(|c| mine.is_some_and(|m| m.contains_key(&c)))
            })
            .map(|(f, v)| (f.clone(), v.clone()))
            .collect();
        remove_members(ctx, room, stale).await?;
        if let Some(mine) = mine.filter(|m| !m.is_empty()) {
            let mut c = redis::cmd("HSET");
            c.arg(ctx.keys.presence(room));
            for (id, member) in mine {
                c.arg(ctx.keys.presence_field(id)).arg(member.to_string());
            }
            let mut p = redis::pipe();
            p.add_command(c)
                .ignore()
                .cmd("SADD")
                .arg(ctx.keys.node_rooms(&node))
                .arg(room)
                .ignore();
            ctx.pipe::<()>(&p).await?;
            // Members Redis had lost (restarted empty, or this node was reaped
            // while away) are announced again: other nodes may have seen them leave.
            let missing: Vec<&Value> = mine
                .iter()
                .filter(|(id, _)| !all.contains_key(&ctx.keys.presence_field(id)))
                .map(|(_, m)| m)
                .collect();
            if !missing.is_empty() {
                let count = ctx.live_presence(room).await?.len();
                for member in missing {
                    let event = member_event("join", room, member.clone(), count);
                    ctx.publish_event(room, &event).await?;
                }
            }
        }
    }
    Ok(recorded)
}
