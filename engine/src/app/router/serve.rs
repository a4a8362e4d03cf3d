//! The two ways a router serves: callbacks of a routed WebSocket endpoint (no
//! task per connection) and one task per routed WebTransport session.

use super::*;

/// The callbacks that serve a routed WebSocket endpoint.
pub(crate) struct RoutedWs {
    pub(crate) router: Arc<Router>,
}

impl crate::app::callbacks::WsCallbacks for RoutedWs {
    fn on_message(&self, conn: &Connection, msg: Message) {
        let ctx = Ctx::ws(conn.clone(), self.router.clone());
        self.router.dispatch(&ctx, msg);
    }

    fn on_close(&self, conn: &Connection) {
        let ctx = Ctx::ws(conn.clone(), self.router.clone());
        self.router.disconnected(&ctx);
    }
}

/// Serve a routed WebTransport session: every text record (on any client stream
/// or datagram) is a message to route; replies go on the session's delivery stream
/// as records with an empty room name. `$disconnect` runs when the session ends.
#[cfg(feature = "webtransport")]
pub(crate) async fn serve_wt(session: WtSession, router: Arc<Router>) {
    use crate::app::wt::WtIncoming;
    use crate::proto::wt::record::{self, RecordReader};
    let max = session.shard.shared.config.websocket.max_message_size;
    let to_message = |rec: record::ClientRecord| {
        if rec.kind == record::TEXT {
            Message::Text(rec.payload)
        } else {
            Message::Binary(rec.payload)
        }
    };
    while let Some(incoming) = session.next().await {
        let mut recv = match incoming {
            WtIncoming::Datagram(d) => {
                if let Ok(rec) = record::parse_body(&d, max) {
                    router.dispatch(&Ctx::wt(session.clone(), router.clone()), to_message(rec));
                }
                continue;
            }
            WtIncoming::Uni(recv) => recv,
            WtIncoming::Bi(stream) => stream.recv,
        };
        let (session, router) = (session.clone(), router.clone());
        glommio::spawn_local(async move {
            let ctx = Ctx::wt(session, router.clone());
            let mut reader = RecordReader::new(max);
            let mut records = Vec::new();
            while let Ok(Some(chunk)) = recv.read().await {
                let fed = reader.feed(&chunk, &mut records);
                for rec in records.drain(..) {
                    router.dispatch(&ctx, to_message(rec));
                }
                if let Err(e) = fed {
                    recv.stop(e.reset_code());
                    return;
                }
            }
        })
        .detach();
    }
    router.disconnected(&Ctx::wt(session, router.clone()));
}
