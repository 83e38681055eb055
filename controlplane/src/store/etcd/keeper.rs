//! Lease renewals over one long-lived etcd `LeaseKeepAlive` stream per store, shared by every
//! caller. Opening a stream per renewal (what a one-off keep-alive does) cost the control plane
//! 94 µs of CPU per renewal with 1,000 leases renewed every 3.3 s (docs/benchmarks.md); one
//! stream carries each renewal as one message.
//!
//! A task owns the stream: it sends each asked-for id and hands etcd's answers (which come in
//! order, each naming its lease) to the callers waiting on that id, first come first served.
//! When the stream fails, the task ends and drops every waiting caller; the next renewal opens
//! a new stream on the store's current endpoint. The task holds a channel and the auth token,
//! not the store, so it ends when the store is dropped.

use std::collections::{HashMap, VecDeque};

use tether_proto::etcd::etcdserverpb as pb;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

/// One renewal asked for: the lease, and where its TTL goes.
pub(super) struct Renewal {
    pub(super) id: i64,
    pub(super) reply: oneshot::Sender<i64>,
}

/// Renewals queued for the stream's task.
const QUEUE: usize = 1024;

/// Starts the task for one stream on `channel`; the sender to ask it for renewals.
pub(super) fn spawn(
    channel: Channel,
    token: Option<MetadataValue<Ascii>>,
) -> mpsc::Sender<Renewal> {
    let (tx, mut rx) = mpsc::channel::<Renewal>(QUEUE);
    tokio::spawn(async move {
        let (out, out_rx) = mpsc::channel(QUEUE);
        let mut req = tonic::Request::new(ReceiverStream::new(out_rx));
        if let Some(t) = token {
            req.metadata_mut().insert("token", t);
        }
        let mut waiting: HashMap<i64, VecDeque<oneshot::Sender<i64>>> = HashMap::new();
        // etcd answers the call (its response headers) only once the first renewal arrived:
        // queue it before opening the stream, or the two wait for each other.
        let Some(Renewal { id, reply }) = rx.recv().await else {
            return;
        };
        waiting.entry(id).or_default().push_back(reply);
        if out.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
            return;
        }
        let mut client = pb::lease_client::LeaseClient::new(channel);
        let Ok(resp) = client.lease_keep_alive(req).await else {
            return;
        };
        let mut answers = resp.into_inner();
        loop {
            tokio::select! {
                r = rx.recv() => {
                    let Some(Renewal { id, reply }) = r else { return };
                    waiting.entry(id).or_default().push_back(reply);
                    if out.send(pb::LeaseKeepAliveRequest { id }).await.is_err() {
                        return;
                    }
                }
                m = answers.message() => {
                    let Ok(Some(a)) = m else { return };
                    if let Some(q) = waiting.get_mut(&a.id) {
                        if let Some(reply) = q.pop_front() {
                            // A caller that gave up is not an error.
                            let _ = reply.send(a.ttl.max(0));
                        }
                        if q.is_empty() {
                            waiting.remove(&a.id);
                        }
                    }
                }
            }
        }
    });
    tx
}
