//! Connections with an expiring token: one timer task each, closing with 4001 at
//! the expiry `$connect` set.

use std::time::SystemTime;

use corecast_shards::ConnId;

use super::shard::Shard;

/// Close code for a connection whose token expired.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;

/// Close connection `id` with [`CLOSE_TOKEN_EXPIRED`] at `at`, if it is still open
/// then (one timer task per connection with an expiring token).
pub(crate) fn arm_expiry(shard: &std::rc::Rc<Shard>, id: ConnId, at: SystemTime) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or(std::time::Duration::ZERO);
        glommio::timer::sleep(wait).await;
        match shard.member_by_id(id) {
            Some(super::shard::Member::Conn(c)) => {
                shard.close(&c, CLOSE_TOKEN_EXPIRED, "token expired")
            }
            #[cfg(feature = "webtransport")]
            Some(super::shard::Member::Wt(s)) => {
                s.conn
                    .close_session(&s, u32::from(CLOSE_TOKEN_EXPIRED), "token expired")
            }
            #[cfg(test)]
            Some(super::shard::Member::Probe(_)) => {}
            None => {}
        }
    })
    .detach();
}
