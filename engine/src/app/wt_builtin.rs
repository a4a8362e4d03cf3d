//! The built-in WebTransport endpoints, written against the public handler API:
//! `rooms` (join `?room=`, publish every record the client sends) and `echo`.

use super::client::ClientHandle;
use super::message::Message;
use super::wt::{Delivery, WtIncoming, WtRecvStream, WtSendStream, WtSession};
use crate::proto::wt::record::{self, RecordReader};

/// `kind: rooms`: join every `?room=` (rooms also named in `?datagram=`, or all
/// with `?delivery=datagram`, are delivered as datagrams) and publish every record
/// the client sends on a stream or as a datagram to all of them.
pub async fn rooms(session: WtSession) {
    let datagram_rooms = session.query_all("datagram");
    let all_datagram = session.query_get("delivery").as_deref() == Some("datagram");
    for room in session.query_all("room") {
        let delivery = if all_datagram || datagram_rooms.contains(&room) {
            Delivery::Datagram
        } else {
            Delivery::Reliable
        };
        session.join_with(&room, delivery);
    }
    let max = session.shard.shared.config.websocket.max_message_size;
    while let Some(incoming) = session.next().await {
        match incoming {
            WtIncoming::Bi(stream) => {
                let s = session.clone();
                glommio::spawn_local(async move {
                    publish_records(&s, stream.recv, Some(stream.send), max).await;
                })
                .detach();
            }
            WtIncoming::Uni(recv) => {
                let s = session.clone();
                glommio::spawn_local(async move { publish_records(&s, recv, None, max).await })
                    .detach();
            }
            WtIncoming::Datagram(d) => {
                if let Ok(rec) = record::parse_body(&d, max) {
                    session.publish_to_my_rooms(&to_message(rec));
                }
            }
        }
    }
}

fn to_message(rec: record::ClientRecord) -> Message {
    if rec.kind == record::TEXT {
        Message::Text(rec.payload)
    } else {
        Message::Binary(rec.payload)
    }
}

/// Publish each record of a client stream; a bad record resets the stream with
/// its code (the session stays).
async fn publish_records(
    session: &WtSession,
    mut recv: WtRecvStream,
    mut send: Option<WtSendStream>,
    max: usize,
) {
    let mut reader = RecordReader::new(max);
    let mut records = Vec::new();
    loop {
        match recv.read().await {
            Ok(Some(chunk)) => {
                let fed = reader.feed(&chunk, &mut records);
                // Records before a bad one in the same chunk are still published.
                for rec in records.drain(..) {
                    session.publish_to_my_rooms(&to_message(rec));
                }
                if let Err(e) = fed {
                    recv.stop(e.reset_code());
                    if let Some(s) = send.as_mut() {
                        s.reset(e.reset_code());
                    }
                    return;
                }
            }
            Ok(None) => {
                if let Some(s) = send.as_mut() {
                    if reader.has_partial() {
                        s.reset(record::RESET_MALFORMED);
                    } else {
                        let _ = s.finish().await;
                    }
                }
                return;
            }
            Err(_) => return,
        }
    }
}

/// `kind: echo`: bidirectional streams come back on themselves, unidirectional ones
/// on a server-opened unidirectional stream, datagrams as datagrams. A client reset
/// (or STOP_SENDING) is answered by resetting the reply with the same code.
pub async fn echo(session: WtSession) {
    while let Some(incoming) = session.next().await {
        match incoming {
            WtIncoming::Bi(mut stream) => {
                glommio::spawn_local(async move {
                    loop {
                        match stream.recv.read().await {
                            Ok(Some(chunk)) => match stream.send.write_all(&chunk).await {
                                Ok(()) => {}
                                Err(super::wt::WtError::Stopped(code)) => {
                                    stream.send.reset(code.unwrap_or(0));
                                    return;
                                }
                                Err(_) => return,
                            },
                            Ok(None) => {
                                let _ = stream.send.finish().await;
                                return;
                            }
                            Err(super::wt::WtError::Reset(code)) => {
                                stream.send.reset(code.unwrap_or(0));
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                })
                .detach();
            }
            WtIncoming::Uni(mut recv) => {
                let s = session.clone();
                let max = session.shard.shared.config.websocket.max_message_size;
                glommio::spawn_local(async move {
                    let Ok(data) = recv.read_to_end(max).await else {
                        return;
                    };
                    if let Ok(mut out) = s.open_uni().await {
                        if out.write_all(&data).await.is_ok() {
                            let _ = out.finish().await;
                        }
                    }
                })
                .detach();
            }
            WtIncoming::Datagram(d) => {
                let _ = session.send_datagram(&d);
            }
        }
    }
}
