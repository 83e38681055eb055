//! Lease renewals over one long-lived etcd `LeaseKeepAlive` stream per store, shared by every
//! caller. Opening a stream per renewal (what a one-off keep-alive does) cost the control plane
//! 94 µs of CPU per renewal with 1,000 leases renewed every 3.3 s (docs/benchmarks.md); one
//! stream carries each renewal as one message.
//!
//! A task owns the stream: it sends each asked-for id and hands etcd's answers (which come in
//! order, each naming its lease) to the callers waiting on that id, first come first served.
//! When the stream fails, the task ends and drops every waiting caller; the next renewal opens
//! a new stream on the store's current endpoint. The task holds a client and its request (with
//! the auth token), not the store, so it ends when the store is dropped.

use std::collections::{HashMap, VecDeque};

use tether_proto::etcd::etcdserverpb as pb;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// One renewal asked for: the lease, and where its TTL goes.
pub(super) struct Renewal {
    pub(super) id: i64,
    pub(super) reply: oneshot::Sender<i64>,
}

/// Callers waiting for an answer about each lease, first come first served.
type Waiting = HashMap<i64, VecDeque<oneshot::Sender<i64>>>;

/// Sends one renewal on the stream, its caller waiting for the answer; false when the stream
/// is gone.
async fn ask(
    waiting: &mut Waiting,
    out: &mpsc::Sender<pb::LeaseKeepAliveRequest>,
    Renewal { id, reply }: Renewal,
) -> bool {
    waiting.entry(id).or_default().push_back(reply);
    out.send(pb::LeaseKeepAliveRequest { id }).await.is_ok()
}

/// Renewals queued for the stream's task, and renewals it may have sent unanswered.
pub(super) const QUEUE: usize = 1024;

/// Starts the task for one stream: `client` and `request` (the stream of renewals `out` feeds,
/// with the auth token) open it. The sender to ask the task for renewals.
pub(super) fn spawn(
    mut client: pb::lease_client::LeaseClient<Channel>,
    request: tonic::Request<ReceiverStream<pb::LeaseKeepAliveRequest>>,
    out: mpsc::Sender<pb::LeaseKeepAliveRequest>,
) -> mpsc::Sender<Renewal> {
    let (tx, mut rx) = mpsc::channel::<Renewal>(QUEUE);
    tokio::spawn(async move {
        let mut waiting = Waiting::new();
        // etcd answers the call (its response headers) only once the first renewal arrived:
        // queue it before opening the stream, or the two wait for each other.
        let Some(first) = rx.recv().await else {
            return;
        };
        if !ask(&mut waiting, &out, first).await {
            return;
        }
        let Ok(resp) = client.lease_keep_alive(request).await else {
            return;
        };
        let mut answers = resp.into_inner();
        loop {
            tokio::select! {
                r = rx.recv() => {
                    let Some(renewal) = r else { return };
                    if !ask(&mut waiting, &out, renewal).await {
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
