use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use super::*;
use crate::convert;
use crate::state::PutResource;
use crate::store::TxnOutcome;
use crate::store::embedded::EmbeddedStore;
use tether_proto::v1::Action;

fn api() -> (tempfile::TempDir, Api<EmbeddedStore>, EmbeddedStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(&dir.path().join("t.redb")).expect("open");
    (dir, Api::new(store.clone(), Layout::default(), None), store)
}

fn backend(name: &str, port: u16) -> v1::Backend {
    v1::Backend {
        name: name.into(),
        address: format!("127.0.0.1:{port}"),
        ..Default::default()
    }
}

fn shard(name: &str, members: &[&str]) -> v1::Director {
    v1::Director {
        name: name.into(),
        revision: 0,
        policy: Some(v1::director::Policy::Shard(v1::Shard::default())),
        members: members
            .iter()
            .map(|m| v1::Member {
                target: Some(v1::member::Target::Backend((*m).into())),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn apply_req(backends: Vec<v1::Backend>, directors: Vec<v1::Director>) -> v1::ApplyRequest {
    v1::ApplyRequest {
        backends,
        directors,
        ..Default::default()
    }
}

#[tokio::test]
async fn create_get_update_with_revisions() {
    let (_d, api, _s) = api();
    let b = api.create(Some(backend("b0", 9000))).await.unwrap();
    assert!(b.revision > 0);
    let e = Status::from(api.create(Some(backend("b0", 9001))).await.unwrap_err());
    assert_eq!(e.code(), Code::AlreadyExists);
    let mut changed = b.clone();
    changed.address = "127.0.0.1:9001".into();
    let b2 = api.update(Some(changed.clone()), None).await.unwrap();
    assert!(b2.revision > b.revision);
    // A write naming the old revision fails and changes nothing.
    changed.address = "127.0.0.1:9002".into();
    let e = Status::from(api.update(Some(changed), None).await.unwrap_err());
    assert_eq!(e.code(), Code::FailedPrecondition);
    let now: v1::Backend = api.get("b0").await.unwrap();
    assert_eq!(now, b2);
}

#[tokio::test]
async fn bad_fields_are_named_and_nothing_is_stored() {
    let (_d, api, store) = api();
    let before = store.list("/").await.unwrap();
    let mut bad = backend("b0", 9000);
    bad.address = "127.0.0.1".into();
    let e = Status::from(api.create(Some(bad)).await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument);
    let br = e.get_details_bad_request().expect("BadRequest details");
    assert_eq!(br.field_violations[0].field, "backend.address");
    // An Apply with one bad field among good resources: refused whole.
    let mut req = apply_req(
        vec![backend("b1", 9001), backend("b2", 9002)],
        vec![shard("d", &["b1", "b2"])],
    );
    req.backends[1].weight = Some(-1.0);
    let e = Status::from(api.apply(req).await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.get_details_bad_request().unwrap().field_violations[0].field,
        "backends[1].weight"
    );
    assert_eq!(store.list("/").await.unwrap(), before);
    // A duration beyond the bound (here the largest a protobuf Duration holds, ~2.9e11 years:
    // it once made `Instant + timeout` panic on every multi-chunk response).
    let mut huge = backend("b0", 9000);
    huge.timeouts = Some(v1::Timeouts {
        between_bytes: Some(prost_types::Duration {
            seconds: i64::MAX,
            nanos: 0,
        }),
        ..Default::default()
    });
    let e = Status::from(api.create(Some(huge)).await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.get_details_bad_request().unwrap().field_violations[0].field,
        "backend.timeouts.between_bytes"
    );
    assert_eq!(store.list("/").await.unwrap(), before);
    // A reference to a missing backend is a failed precondition.
    let e = Status::from(
        api.apply(apply_req(vec![], vec![shard("d", &["nope"])]))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("directors[0].members[0].backend"),
        "{}",
        e.message()
    );
    assert_eq!(store.list("/").await.unwrap(), before);
}

#[tokio::test]
async fn referenced_resources_cannot_be_deleted() {
    let (_d, api, _s) = api();
    api.apply(apply_req(
        vec![backend("b0", 9000)],
        vec![shard("d", &["b0"])],
    ))
    .await
    .unwrap();
    let e = Status::from(
        api.delete::<v1::Backend>(v1::DeleteRequest {
            name: "b0".into(),
            revision: 0,
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("directors/d.members[0].backend"),
        "{}",
        e.message()
    );
    api.delete::<v1::Director>(v1::DeleteRequest {
        name: "d".into(),
        revision: 0,
    })
    .await
    .unwrap();
    api.delete::<v1::Backend>(v1::DeleteRequest {
        name: "b0".into(),
        revision: 0,
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn apply_reports_changes_dry_run_writes_nothing_and_prune_deletes() {
    let (_d, api, store) = api();
    let names: Vec<String> = (0..10).map(|i| format!("b{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let backends: Vec<_> = (0..10)
        .map(|i| backend(&names[i], 9000 + i as u16))
        .collect();
    let r = api
        .apply(apply_req(backends.clone(), vec![shard("d", &refs)]))
        .await
        .unwrap();
    assert!(r.changes.iter().all(|c| c.action == Action::Create as i32));
    let rev = r.revision;
    // Dry run of removing one of ten members: about a tenth of keys move; nothing written.
    let mut req = apply_req(backends.clone(), vec![shard("d", &refs[..9])]);
    req.dry_run = true;
    let r = api.apply(req).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), rev);
    let d = r.changes.iter().find(|c| c.kind == "director").unwrap();
    assert_eq!(d.action, Action::Update as i32);
    let moved = &r.keys_moved[0];
    assert!((0.05..0.2).contains(&moved.share), "{moved:?}");
    // Prune: only b0 and no director remain.
    let mut req = apply_req(vec![backend("b0", 9000)], vec![]);
    req.prune = true;
    let r = api.apply(req).await.unwrap();
    assert_eq!(
        r.changes
            .iter()
            .filter(|c| c.action == Action::Delete as i32)
            .count(),
        10
    );
    let (left, _, _) = api
        .list::<v1::Backend>(&v1::ListRequest::default())
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    // Unchanged apply writes nothing.
    let again = api
        .apply(apply_req(vec![backend("b0", 9000)], vec![]))
        .await
        .unwrap();
    assert_eq!(again.revision, r.revision);
    assert_eq!(again.changes[0].action, Action::Unchanged as i32);
}

#[tokio::test]
async fn set_health_by_pattern() {
    let (_d, api, _s) = api();
    api.apply(apply_req(
        vec![
            backend("web-1", 9001),
            backend("web-2", 9002),
            backend("db", 9003),
        ],
        vec![],
    ))
    .await
    .unwrap();
    let r = api
        .set_health(v1::SetHealthRequest {
            pattern: "web-*".into(),
            state: v1::AdminHealth::Sick as i32,
        })
        .await
        .unwrap();
    assert_eq!(r.backends, ["web-1", "web-2"]);
    let db: v1::Backend = api.get("db").await.unwrap();
    assert_eq!(db.admin_health, v1::AdminHealth::Auto as i32);
    let e = Status::from(
        api.set_health(v1::SetHealthRequest {
            pattern: "nope".into(),
            state: 0,
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code(), Code::InvalidArgument);
    let h = api
        .list_health(v1::ListHealthRequest {
            pattern: "(:9002)".into(),
        })
        .await
        .unwrap();
    assert_eq!(h.backends.len(), 1);
    assert!(!h.backends[0].healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_and_reports_compaction() {
    let (_d, api, store) = api();
    api.create(Some(backend("b0", 9000))).await.unwrap();
    let mut stream = Tether::watch(&api, Request::new(v1::WatchRequest { from_revision: 1 }))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.events[0].name, "b0");
    assert_eq!(first.events[0].action, Action::Create as i32);
    api.delete::<v1::Backend>(v1::DeleteRequest {
        name: "b0".into(),
        revision: 0,
    })
    .await
    .unwrap();
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!(second.events[0].action, Action::Delete as i32);
    store
        .compact(store.revision().await.unwrap())
        .await
        .unwrap();
    let Err(e) = Tether::watch(&api, Request::new(v1::WatchRequest { from_revision: 1 })).await
    else {
        panic!("watching compacted history must fail")
    };
    assert_eq!(e.code(), Code::OutOfRange);
    assert!(e.message().contains("list again"), "{}", e.message());
}

#[tokio::test]
async fn explain_from_the_store() {
    let (_d, api, _s) = api();
    let mut b1 = backend("b1", 9001);
    b1.admin_health = v1::AdminHealth::Sick as i32;
    api.apply(apply_req(
        vec![backend("b0", 9000), b1],
        vec![shard("d", &["b0", "b1"])],
    ))
    .await
    .unwrap();
    for k in ["a", "b", "c", "d"] {
        let e = api
            .explain(v1::ExplainRequest {
                target: Some(v1::explain_request::Target::Director("d".into())),
                key: k.into(),
                alternates: 2,
            })
            .await
            .unwrap();
        assert_eq!(e.backend, "b0", "b1 is sick");
        assert_eq!(e.alternates.len(), 2);
    }
}

/// The embedded store with etcd-like small transaction limits; `Small::failing_after(k)`
/// fails every transaction after its k-th, as a control plane killed there would stop.
#[derive(Debug, Clone)]
struct Small(EmbeddedStore, Option<Arc<std::sync::atomic::AtomicUsize>>);

impl Small {
    fn new(s: EmbeddedStore) -> Small {
        Small(s, None)
    }

    fn failing_after(s: EmbeddedStore, k: usize) -> Small {
        Small(s, Some(Arc::new(std::sync::atomic::AtomicUsize::new(k))))
    }
}

impl Store for Small {
    fn kind(&self) -> &'static str {
        "small"
    }
    async fn revision(&self) -> Result<i64, crate::store::StoreError> {
        self.0.revision().await
    }
    async fn get(
        &self,
        key: &str,
    ) -> Result<Option<crate::store::KeyValue>, crate::store::StoreError> {
        self.0.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<crate::store::Listing, crate::store::StoreError> {
        self.0.list(prefix).await
    }
    async fn txn(&self, txn: crate::store::Txn) -> Result<TxnOutcome, crate::store::StoreError> {
        assert!(
            txn.ops.len() <= 5,
            "a part exceeds the limit: {}",
            txn.ops.len()
        );
        if let Some(budget) = &self.1 {
            use std::sync::atomic::Ordering;
            if budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
            {
                return Err(crate::store::StoreError::Unavailable("killed".into()));
            }
        }
        self.0.txn(txn).await
    }
    async fn watch(
        &self,
        prefix: &str,
        from: i64,
    ) -> Result<crate::store::WatchReceiver, crate::store::StoreError> {
        self.0.watch(prefix, from).await
    }
    async fn lease_grant(&self, ttl: i64) -> Result<i64, crate::store::StoreError> {
        self.0.lease_grant(ttl).await
    }
    async fn lease_keep_alive(&self, id: i64) -> Result<i64, crate::store::StoreError> {
        self.0.lease_keep_alive(id).await
    }
    async fn lease_revoke(&self, id: i64) -> Result<bool, crate::store::StoreError> {
        self.0.lease_revoke(id).await
    }
    async fn lease_time_to_live(
        &self,
        id: i64,
    ) -> Result<Option<crate::store::LeaseStatus>, crate::store::StoreError> {
        self.0.lease_time_to_live(id).await
    }
    async fn compact(&self, revision: i64) -> Result<(), crate::store::StoreError> {
        self.0.compact(revision).await
    }
    fn max_txn_ops(&self) -> usize {
        5
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_too_large_for_one_transaction_is_split_into_valid_parts() {
    let (_d, _api, store) = api();
    let api = Api::new(Small::new(store.clone()), Layout::default(), None);
    let names: Vec<String> = (0..12).map(|i| format!("b{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let backends: Vec<_> = (0..12)
        .map(|i| backend(&names[i], 9000 + i as u16))
        .collect();
    let r = api
        .apply(apply_req(backends.clone(), vec![shard("d", &refs)]))
        .await
        .unwrap();
    assert!(
        r.revision >= 4,
        "13 resources in parts of 4: {}",
        r.revision
    );
    // Replace the set: half the backends go, the director shrinks; also split.
    let mut req = apply_req(backends[..6].to_vec(), vec![shard("d", &refs[..6])]);
    req.prune = true;
    let r2 = api.apply(req).await.unwrap();
    // Every intermediate revision is a complete, valid configuration.
    let layout = Layout::default();
    let mut rx = store.watch(layout.root(), 1).await.unwrap();
    let mut state = State::default();
    while state.revision < r2.revision {
        let b = rx.recv().await.unwrap().unwrap();
        state.apply_events(&layout, b.revision, &b.events);
        convert::validate(&state.resources())
            .unwrap_or_else(|e| panic!("revision {} is incomplete: {e}", b.revision));
    }
    assert_eq!(state.backends.len(), 6);
    assert_eq!(state.directors["d"].members.len(), 6);
}

fn nested(name: &str, inner: &str) -> v1::Director {
    v1::Director {
        name: name.into(),
        policy: Some(v1::director::Policy::Fallback(v1::Fallback::default())),
        members: vec![v1::Member {
            target: Some(v1::member::Target::Director(inner.into())),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_write_killed_after_any_part_is_all_or_nothing_and_never_seen_half_done() {
    let layout = Layout::default();
    // 20 backends and directors nesting each other, named so that referrers sort first: 23
    // resources in parts of 3, so 8 parts, staged in 8 transactions first.
    let names: Vec<String> = (0..20).map(|i| format!("b{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let write = apply_req(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| backend(n, 9000 + i as u16))
            .collect(),
        vec![
            nested("a-top", "m-mid"),
            nested("m-mid", "z-leaf"),
            shard("z-leaf", &refs),
        ],
    );
    for k in [0, 4, 8, 9, 12, 15, 16, 17] {
        let (_d, _api, store) = api();
        let base = Api::new(Small::new(store.clone()), layout.clone(), None);
        base.apply(apply_req(vec![backend("a0", 1)], vec![]))
            .await
            .unwrap();
        let before = store.revision().await.unwrap();
        let killed = Api::new(Small::failing_after(store.clone(), k), layout.clone(), None);
        let r = killed.apply(write.clone()).await;
        // After 16 (staging and parts), only the record's deletion fails: logged, not an error.
        assert_eq!(r.is_ok(), k >= 16, "k = {k}: {r:?}");
        // The next start completes the write, or there is nothing to complete.
        let restarted = Api::new(Small::new(store.clone()), layout.clone(), None);
        restarted.recover().await.unwrap();
        let (state, _) = State::from_listing(&layout, &store.list(layout.root()).await.unwrap());
        assert!(!state.write_open, "k = {k}");
        let all = state.backends.len() == 21 && state.directors.len() == 3;
        let none = state.backends.len() == 1 && state.directors.is_empty();
        assert!(all || none, "k = {k}: {state:?}");
        // Part 1 committed (k > 8): the whole write is there; and its record is gone.
        assert_eq!(all, k > 8, "k = {k}");
        let intents = store.list("/tether/v1/intents/").await.unwrap().kvs;
        assert!(k <= 8 || intents.is_empty(), "k = {k}: {intents:?}");
        // What a data plane following the store applies: only revisions outside the write,
        // each the state before it or the whole of it.
        let now = store.revision().await.unwrap();
        let mut rx = store.watch(layout.root(), 1).await.unwrap();
        let mut seen = State::default();
        while seen.revision < now {
            let b = rx.recv().await.unwrap().unwrap();
            seen.apply_events(&layout, b.revision, &b.events);
            if seen.revision <= before || seen.write_open {
                continue;
            }
            let n = (seen.backends.len(), seen.directors.len());
            assert!(
                n == (1, 0) || n == (21, 3),
                "k = {k}: revision {} applies {n:?}",
                b.revision
            );
            convert::validate(&seen.resources()).unwrap();
        }
        // And the next write goes through.
        restarted.create(Some(backend("late", 2))).await.unwrap();
    }
}

#[test]
fn nested_directors_are_put_inner_first_and_deleted_referrer_first() {
    let layout = Layout::default();
    let mut a = State::default();
    let mut b = State::default();
    for d in [
        nested("a-top", "m-mid"),
        nested("m-mid", "z-leaf"),
        shard("z-leaf", &[]),
    ] {
        b.directors.put(d.name.clone(), d);
    }
    let names = |ops: &[crate::store::Op]| -> Vec<String> {
        ops.iter()
            .map(|o| o.key().rsplit('/').next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&a.diff_ops(&b, &layout)),
        ["z-leaf", "m-mid", "a-top"]
    );
    std::mem::swap(&mut a, &mut b);
    assert_eq!(
        names(&a.diff_ops(&b, &layout)),
        ["a-top", "m-mid", "z-leaf"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_stream_sends_a_split_write_as_one_response() {
    let (_d, _api, store) = api();
    let api = Api::new(Small::new(store.clone()), Layout::default(), None);
    let mut stream = Tether::watch(
        &api,
        tonic::Request::new(v1::WatchRequest { from_revision: 0 }),
    )
    .await
    .unwrap()
    .into_inner();
    let names: Vec<String> = (0..12).map(|i| format!("b{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let backends = (0..12)
        .map(|i| backend(&names[i], 9000 + i as u16))
        .collect();
    let r = api
        .apply(apply_req(backends, vec![shard("d", &refs)]))
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.revision, r.revision, "sent at the write's last part");
    assert_eq!(first.events.len(), 13, "all of it in one response");
}

#[tokio::test]
async fn an_unfinished_mark_without_its_record_is_closed_not_waited_on_forever() {
    let (_d, api, store) = api();
    api.create(Some(backend("a", 1))).await.unwrap();
    let serial = Layout::default().serial();
    let kv = store.get(&serial).await.unwrap().unwrap();
    // Part 2 of 5 of a write whose intent record is gone, an hour old.
    let mut mark = crate::serial::Serial::new(5).at(2);
    mark.time_ns -= 3_600_000_000_000;
    let out = store
        .txn(crate::store::Txn {
            compares: vec![],
            ops: vec![crate::store::Op::Put(serial.clone(), mark.encode())],
            witness: None,
        })
        .await
        .unwrap();
    assert!(matches!(out, TxnOutcome::Committed { .. }));
    assert_ne!(store.get(&serial).await.unwrap().unwrap().value, kv.value);
    // The next write closes it and goes through.
    api.create(Some(backend("b", 2))).await.unwrap();
    let v = store.get(&serial).await.unwrap().unwrap().value;
    assert!(!crate::serial::marks_open_write(&v));
}

fn ttl(secs: i64) -> v1::GrantLeaseRequest {
    v1::GrantLeaseRequest {
        ttl: Some(prost_types::Duration {
            seconds: secs,
            nanos: 0,
        }),
    }
}

fn selecting(name: &str, app: &str) -> v1::Director {
    v1::Director {
        name: name.into(),
        policy: Some(v1::director::Policy::Shard(v1::Shard::default())),
        members: vec![v1::Member {
            target: Some(v1::member::Target::Selector(v1::LabelSelector {
                match_labels: [("app".to_owned(), app.to_owned())].into(),
                ..Default::default()
            })),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_leased_resource_is_named_only_by_resources_on_its_lease() {
    let (_d, api, store) = api();
    let lease = api.grant_lease(ttl(60)).await.unwrap();
    assert_eq!((lease.ttl, lease.remaining), (60, 60));
    let mut b1 = backend("b1", 9001);
    b1.lease = lease.id;
    b1.labels.insert("app".into(), "web".into());
    api.create(Some(b1)).await.unwrap();
    api.create(Some(backend("b2", 9002))).await.unwrap();
    // An unleased director naming the leased backend: refused, naming the field and the rule.
    let before = store.list("/").await.unwrap();
    let e = Status::from(
        api.create(Some(shard("named", &["b1", "b2"])))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("director.members[0].backend") && e.message().contains("lease"),
        "{}",
        e.message()
    );
    assert_eq!(store.list("/").await.unwrap(), before);
    // The same director on the backend's lease, and one selecting it by label: accepted.
    let mut same = shard("same", &["b1", "b2"]);
    same.lease = lease.id;
    api.create(Some(same)).await.unwrap();
    api.create(Some(selecting("sel", "web"))).await.unwrap();
    // An update that leaves the lease 0 keeps it.
    let mut moved: v1::Backend = api.get("b1").await.unwrap();
    moved.lease = 0;
    moved.address = "127.0.0.1:9011".into();
    assert_eq!(api.update(Some(moved), None).await.unwrap().lease, lease.id);
    // b2 is named by `same`, which is on the first lease: binding b2 to another lease is
    // refused.
    let other = api.grant_lease(ttl(60)).await.unwrap();
    let mut b2: v1::Backend = api.get("b2").await.unwrap();
    b2.lease = other.id;
    let e = Status::from(api.update(Some(b2), None).await.unwrap_err());
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    // The lease ends: the backend and the director on it go at one revision; the selecting
    // director stays, now empty.
    let rev = store.revision().await.unwrap();
    api.revoke_lease(lease.id).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), rev + 1);
    let s = api.load().await.unwrap();
    assert_eq!(s.backends.keys().collect::<Vec<_>>(), ["b2"]);
    assert_eq!(s.directors.keys().collect::<Vec<_>>(), ["sel"]);
    assert_eq!(
        Status::from(api.revoke_lease(lease.id).await.unwrap_err()).code(),
        Code::NotFound
    );
    assert_eq!(
        Status::from(api.get_lease(lease.id).await.unwrap_err()).code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn a_write_bound_to_a_missing_lease_and_bad_ttls_are_refused() {
    let (_d, api, store) = api();
    let before = store.list("/").await.unwrap();
    let mut b = backend("b1", 9001);
    b.lease = 0x5eed;
    let e = Status::from(api.create(Some(b.clone())).await.unwrap_err());
    assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
    assert!(e.message().contains("5eed"), "{}", e.message());
    let mut req = apply_req(vec![b], vec![]);
    req.dry_run = true;
    let e = Status::from(api.apply(req).await.unwrap_err());
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "dry run: {}",
        e.message()
    );
    assert_eq!(store.list("/").await.unwrap(), before);
    for bad in [ttl(1), ttl(-5), ttl(10_000_000_000_000_000), ttl(86_401)] {
        let e = Status::from(api.grant_lease(bad).await.unwrap_err());
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert_eq!(
            e.get_details_bad_request().unwrap().field_violations[0].field,
            "ttl"
        );
    }
    let e = Status::from(
        api.grant_lease(v1::GrantLeaseRequest { ttl: None })
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn an_apply_binds_its_set_to_a_lease_and_prune_leaves_leased_resources() {
    let (_d, api, store) = api();
    let lease = api.grant_lease(ttl(60)).await.unwrap();
    let mut req = apply_req(
        vec![backend("b1", 9001), backend("b2", 9002)],
        vec![shard("d", &["b1", "b2"])],
    );
    req.lease = lease.id;
    api.apply(req).await.unwrap();
    let s = api.load().await.unwrap();
    assert!(s.backends.values().all(|b| b.lease == lease.id));
    assert_eq!(s.directors["d"].lease, lease.id);
    // An unleased apply with prune of something else leaves the leased set alone.
    let mut req = apply_req(vec![backend("b3", 9003)], vec![]);
    req.prune = true;
    let r = api.apply(req).await.unwrap();
    assert!(
        r.changes.iter().all(|c| c.action != Action::Delete as i32),
        "{:?}",
        r.changes
    );
    assert_eq!(api.load().await.unwrap().backends.len(), 3);
    api.revoke_lease(lease.id).await.unwrap();
    let s = api.load().await.unwrap();
    assert_eq!(s.backends.keys().collect::<Vec<_>>(), ["b3"]);
    assert!(s.directors.is_empty());
    drop(store);
}

/// A split write bound to a lease, killed after its first part, whose lease then ends: the
/// next write's recovery completes it without the ended lease's resources (they would be gone
/// anyway) instead of failing every write after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_write_whose_lease_ended_is_completed_without_it() {
    let layout = Layout::default();
    let names: Vec<String> = (0..20).map(|i| format!("b{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (_d, api, store) = api();
    let lease = api.grant_lease(ttl(60)).await.unwrap().id;
    let mut write = apply_req(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| backend(n, 9000 + i as u16))
            .collect(),
        vec![shard("z-leaf", &refs)],
    );
    write.lease = lease;
    let base = Api::new(Small::new(store.clone()), layout.clone(), None);
    base.apply(apply_req(vec![backend("a0", 1)], vec![]))
        .await
        .unwrap();
    // 21 resources in parts of 3: 7 staged, then part 1 commits and the writer dies.
    let killed = Api::new(Small::failing_after(store.clone(), 8), layout.clone(), None);
    assert!(killed.apply(write).await.is_err());
    let (state, _) = State::from_listing(&layout, &store.list(layout.root()).await.unwrap());
    assert!(state.write_open && state.backends.len() > 1, "{state:?}");
    api.revoke_lease(lease).await.unwrap();
    let restarted = Api::new(Small::new(store.clone()), layout.clone(), None);
    restarted
        .apply(apply_req(vec![backend("after", 2)], vec![]))
        .await
        .unwrap();
    let (state, _) = State::from_listing(&layout, &store.list(layout.root()).await.unwrap());
    assert!(!state.write_open);
    assert_eq!(state.backends.keys().collect::<Vec<_>>(), ["a0", "after"]);
    assert!(state.directors.is_empty());
}

fn discovery(name: &str) -> v1::Discovery {
    v1::Discovery {
        name: name.into(),
        dns_name: "web.test".into(),
        port: 80,
        labels: [("app".to_owned(), "web".to_owned())].into(),
        template: Some(v1::Backend {
            probe: "hc".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn discoveries_are_checked_kept_by_their_resolver_and_take_their_backends_along() {
    use crate::discovery::reconcile::{Outcome, reconcile};
    let (_d, api, store) = api();
    let bad = v1::Discovery {
        dns_name: "10.0.0.1".into(),
        ..discovery("web")
    };
    let e = Status::from(api.create(Some(bad)).await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.get_details_bad_request().unwrap().field_violations[0].field,
        "discovery.dns_name"
    );
    // The template's probe must exist.
    let e = Status::from(api.create(Some(discovery("web"))).await.unwrap_err());
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    api.create(Some(v1::Probe {
        name: "hc".into(),
        url: "/".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    api.create(Some(discovery("web"))).await.unwrap();
    // What the resolver writes, fenced by a key this test holds.
    let key = api.layout().election("discovery");
    let won = store
        .txn(crate::store::Txn {
            compares: vec![],
            ops: vec![crate::store::Op::Put(key.clone(), b"me".to_vec())],
            witness: None,
        })
        .await
        .unwrap();
    let TxnOutcome::Committed { revision } = won else {
        panic!("{won:?}")
    };
    let fence = crate::store::Compare::ModRevision(key.clone(), revision);
    let found = Outcome::Answer(vec!["10.0.0.1:80".parse().unwrap()]);
    api.write_fenced(false, Some(&fence), |old, new| {
        Ok(reconcile(old, new, "web", &found, 1000, "me"))
    })
    .await
    .unwrap();
    let b: v1::Backend = api.get("web-10-0-0-1-80").await.unwrap();
    assert_eq!((b.discovery.as_str(), b.probe.as_str()), ("web", "hc"));
    // A user's write cannot take the backend from its discovery, nor replace its status.
    let mut mine = b.clone();
    mine.discovery.clear();
    mine.weight = Some(3.0);
    assert_eq!(api.update(Some(mine), None).await.unwrap().discovery, "web");
    let d: v1::Discovery = api.get("web").await.unwrap();
    let st = d.status.clone().unwrap();
    let mut edited = d.clone();
    edited.status = None;
    edited.grace = Some(prost_types::Duration {
        seconds: 5,
        nanos: 0,
    });
    assert_eq!(
        api.update(Some(edited), None).await.unwrap().status,
        Some(st)
    );
    // No director may name it; the template's probe cannot go.
    let e = Status::from(
        api.create(Some(shard("s", &["web-10-0-0-1-80"])))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = Status::from(
        api.delete::<v1::Probe>(v1::DeleteRequest {
            name: "hc".into(),
            revision: 0,
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    // A lost election: the fenced write fails and writes nothing.
    store
        .txn(crate::store::Txn {
            compares: vec![],
            ops: vec![crate::store::Op::Put(key, b"other".to_vec())],
            witness: None,
        })
        .await
        .unwrap();
    let gone = Outcome::Answer(vec![]);
    let before = store.revision().await.unwrap();
    let r = api
        .write_fenced(false, Some(&fence), |old, new| {
            Ok(reconcile(old, new, "web", &gone, 1_000_000, "me"))
        })
        .await;
    assert!(matches!(r, Err(ApiError::Fenced(_))), "{r:?}");
    assert_eq!(store.revision().await.unwrap(), before);
    // Deleting the discovery deletes its backends in the same write.
    api.delete::<v1::Discovery>(v1::DeleteRequest {
        name: "web".into(),
        revision: 0,
    })
    .await
    .unwrap();
    assert!(api.get::<v1::Backend>("web-10-0-0-1-80").await.is_err());
    assert_eq!(store.revision().await.unwrap(), before + 1);
}

#[tokio::test]
async fn writes_start_from_a_cache_that_is_what_a_listing_would_give() {
    let (_d, api, store) = api();
    let same = |a: &State, b: &State| {
        assert_eq!(a.revision, b.revision);
        assert_eq!(a.serial_revision, b.serial_revision);
        assert_eq!(a.write_open, b.write_open);
        assert_eq!(a.backends, b.backends);
        assert_eq!(a.directors, b.directors);
        assert_eq!(a.discoveries, b.discoveries);
    };
    api.apply(apply_req(
        vec![backend("b0", 9000), backend("b1", 9001)],
        vec![shard("d", &["b0", "b1"])],
    ))
    .await
    .unwrap();
    // The first write listed and seeded the cache; the next ones start from it.
    for port in 9002..9010 {
        api.create(Some(backend(&format!("x{port}"), port)))
            .await
            .unwrap();
        same(
            &api.load_for_write(api.store.revision().await.unwrap())
                .await
                .unwrap(),
            &api.load().await.unwrap(),
        );
    }
    // A change made behind the API's back (another control plane, a lease's end) is in the
    // state the next write starts from.
    let key = api.layout().key(tether_proto::keys::Kind::Backend, "x9002");
    store
        .txn(crate::store::Txn {
            compares: vec![],
            ops: vec![crate::store::Op::Delete(key)],
            witness: None,
        })
        .await
        .unwrap();
    let s = api
        .load_for_write(api.store.revision().await.unwrap())
        .await
        .unwrap();
    assert!(!s.backends.contains_key("x9002"));
    same(&s, &api.load().await.unwrap());
    // And a write validated against it: b1 can still not be deleted (the director names it).
    let e = Status::from(
        api.delete::<v1::Backend>(v1::DeleteRequest {
            name: "b1".into(),
            revision: 0,
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn a_write_reuses_conversions_only_of_what_it_left_as_stored() {
    let (_d, api, _s) = api();
    let b = api.create(Some(backend("b0", 9000))).await.unwrap();
    api.create(Some(backend("b1", 9001))).await.unwrap();
    // The stored b0 was converted (and its conversion kept) by the writes so far. An update
    // carrying b0's stored revision with a bad address must be converted, not served the
    // stored b0's conversion.
    let mut bad = b.clone();
    bad.address = "127.0.0.1".into();
    let e = Status::from(api.update(Some(bad), None).await.unwrap_err());
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // A good change under the same revision reaches the validated configuration.
    let mut moved = b.clone();
    moved.address = "127.0.0.1:9100".into();
    let w = api
        .write(false, |_, new| {
            new.backends.put("b0".into(), moved.clone());
            Ok(())
        })
        .await
        .unwrap();
    let spec = w
        .built
        .config
        .backends
        .iter()
        .find(|s| s.name == "b0")
        .unwrap();
    assert_eq!(spec.address.to_string(), "127.0.0.1:9100");

    // What create and update return is what reading it back gives (they no longer read it
    // back): changed, at the write's revision; unchanged, at its own.
    let c = api.create(Some(backend("b9", 9009))).await.unwrap();
    assert_eq!(c, api.get::<v1::Backend>("b9").await.unwrap());
    let mut heavier = c.clone();
    heavier.weight = Some(3.0);
    let u = api.update(Some(heavier), None).await.unwrap();
    assert!(u.revision > c.revision);
    assert_eq!(u, api.get::<v1::Backend>("b9").await.unwrap());
    let same = api.update(Some(u.clone()), None).await.unwrap();
    assert_eq!(same, u);
    // What the write path adds goes with it: a balanced selector director's slots.
    let mut web = backend("w1", 9011);
    web.labels = [("app".to_owned(), "web".to_owned())].into();
    api.create(Some(web)).await.unwrap();
    let mut sel = selecting("sel", "web");
    if let Some(v1::director::Policy::Shard(sh)) = sel.policy.as_mut() {
        sh.algorithm = v1::ShardAlgorithm::Balanced as i32;
    }
    let d = api.create(Some(sel)).await.unwrap();
    assert!(!d.selector_slots.is_empty(), "{d:?}");
    assert_eq!(d, api.get::<v1::Director>("sel").await.unwrap());

    // Marking: what a write changed or added is "not stored"; the rest keeps its revision.
    let old = api.load().await.unwrap();
    let mut new = old.clone();
    std::sync::Arc::make_mut(new.backends.get_mut("b1").unwrap()).weight = Some(7.0);
    new.backends.put("b2".into(), backend("b2", 9002));
    new.mark_written(&old);
    assert_eq!(new.backends["b0"].revision, old.backends["b0"].revision);
    assert_eq!(new.backends["b1"].revision, 0);
    assert_eq!(new.backends["b2"].revision, 0);
}
