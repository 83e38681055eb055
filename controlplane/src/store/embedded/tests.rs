use std::time::Duration;

use super::*;

fn open() -> (tempfile::TempDir, EmbeddedStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(&dir.path().join("tether.redb")).expect("open");
    (dir, store)
}

fn put(k: &str, v: &str) -> Op {
    Op::Put(k.to_owned(), v.as_bytes().to_vec())
}

async fn commit(s: &EmbeddedStore, ops: Vec<Op>) -> i64 {
    match s
        .txn(Txn {
            compares: vec![],
            ops,
            witness: None,
        })
        .await
        .expect("txn")
    {
        TxnOutcome::Committed { revision } => revision,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn revisions_increase_once_per_write_and_record_create_and_mod() {
    let (_d, s) = open();
    assert_eq!(s.revision().await.unwrap(), 0);
    assert_eq!(commit(&s, vec![put("/a", "1"), put("/b", "1")]).await, 1);
    assert_eq!(commit(&s, vec![put("/a", "2")]).await, 2);
    let a = s.get("/a").await.unwrap().unwrap();
    assert_eq!(
        (a.create_revision, a.mod_revision, a.value.as_slice()),
        (1, 2, &b"2"[..])
    );
    // Deleting a missing key writes nothing and keeps the revision.
    assert_eq!(commit(&s, vec![Op::Delete("/nope".into())]).await, 2);
    assert_eq!(commit(&s, vec![Op::Delete("/b".into())]).await, 3);
    assert_eq!(s.get("/b").await.unwrap(), None);
}

#[tokio::test]
async fn a_failed_compare_writes_nothing() {
    let (_d, s) = open();
    commit(&s, vec![put("/a", "1")]).await;
    let before = s.list("/").await.unwrap();
    for compares in [
        vec![Compare::ModRevision("/a".into(), 7)],
        vec![
            Compare::Exists("/a".into()),
            Compare::Exists("/missing".into()),
        ],
        vec![Compare::Missing("/a".into())],
    ] {
        let n = compares.len();
        let out = s
            .txn(Txn {
                compares,
                ops: vec![put("/a", "changed"), put("/c", "new")],
                witness: None,
            })
            .await
            .unwrap();
        assert_eq!(
            out,
            TxnOutcome::Failed {
                compare: Some(n - 1)
            }
        );
        assert_eq!(
            s.list("/").await.unwrap(),
            before,
            "nothing stored, nothing changed"
        );
    }
    let ok = s
        .txn(Txn {
            compares: vec![
                Compare::ModRevision("/a".into(), 1),
                Compare::Missing("/c".into()),
            ],
            ops: vec![put("/a", "changed"), put("/c", "new")],
            witness: None,
        })
        .await
        .unwrap();
    assert_eq!(ok, TxnOutcome::Committed { revision: 2 });
}

#[tokio::test]
async fn list_is_by_prefix_in_key_order_at_one_revision() {
    let (_d, s) = open();
    commit(
        &s,
        vec![
            put("/t/v1/backends/b", "x"),
            put("/t/v1/backends/a", "y"),
            put("/t/v1/routes/r", "z"),
            put("/u/x", "w"),
        ],
    )
    .await;
    let l = s.list("/t/v1/backends/").await.unwrap();
    assert_eq!(l.revision, 1);
    let keys: Vec<&str> = l.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/t/v1/backends/a", "/t/v1/backends/b"]);
}

#[tokio::test]
async fn everything_survives_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.redb");
    {
        let s = EmbeddedStore::open(&path).unwrap();
        commit(&s, vec![put("/a", "1")]).await;
        commit(&s, vec![put("/b", "2")]).await;
    }
    let s = EmbeddedStore::open(&path).unwrap();
    assert_eq!(s.revision().await.unwrap(), 2);
    assert_eq!(s.get("/b").await.unwrap().unwrap().value, b"2");
    assert_eq!(
        commit(&s, vec![put("/c", "3")]).await,
        3,
        "the revision continues"
    );
}

async fn next(rx: &mut WatchReceiver) -> WatchBatch {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a batch in time")
        .expect("open")
        .expect("ok")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_history_then_follows_live_writes_filtered_by_prefix() {
    let (_d, s) = open();
    commit(&s, vec![put("/w/a", "1")]).await; // 1
    commit(&s, vec![put("/other", "x")]).await; // 2: not under /w/
    commit(
        &s,
        vec![
            put("/w/a", "2"),
            Op::Delete("/w/a".into()),
            put("/w/b", "1"),
        ],
    )
    .await; // 3
    let mut rx = s.watch("/w/", 1).await.unwrap();
    let b1 = next(&mut rx).await;
    assert_eq!(b1.revision, 1);
    let b3 = next(&mut rx).await;
    assert_eq!(b3.revision, 3, "revision 2 had nothing under the prefix");
    assert_eq!(
        b3.events.len(),
        3,
        "one batch holds every event of its revision"
    );
    // The delete carries the value it removed (put earlier in the same transaction).
    assert!(matches!(
        &b3.events[1],
        Event::Delete { key, mod_revision: 3, prev: Some(p) } if key == "/w/a" && p.value == b"2"
    ));
    // Live: many writes, each delivered once, in order.
    let writer = s.clone();
    tokio::spawn(async move {
        for i in 0..200 {
            commit(&writer, vec![put("/w/live", &i.to_string())]).await;
        }
    });
    for i in 0..200 {
        let b = next(&mut rx).await;
        assert_eq!(b.revision, 4 + i);
        let Event::Put(kv) = &b.events[0] else {
            panic!("{b:?}")
        };
        assert_eq!(kv.value, i.to_string().as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_now_and_errors_for_future_and_compacted_revisions() {
    let (_d, s) = open();
    for i in 0..5 {
        commit(&s, vec![put("/k", &i.to_string())]).await;
    }
    let mut now = s.watch("/", 0).await.unwrap();
    commit(&s, vec![put("/k", "new")]).await;
    assert_eq!(next(&mut now).await.revision, 6);
    assert!(matches!(
        s.watch("/", 9).await,
        Err(StoreError::FutureRevision {
            requested: 9,
            current: 6
        })
    ));
    s.compact(4).await.unwrap();
    match s.watch("/", 2).await {
        Err(StoreError::Compacted {
            requested: 2,
            compact_revision: 4,
        }) => {}
        other => panic!("{other:?}"),
    }
    let mut rx = s.watch("/", 4).await.unwrap();
    assert_eq!(
        next(&mut rx).await.revision,
        4,
        "history from the compaction point stays"
    );
    // The data itself is untouched by compaction.
    assert_eq!(s.get("/k").await.unwrap().unwrap().value, b"new");
}

fn put_leased(k: &str, v: &str, lease: i64) -> Op {
    Op::PutLeased(k.to_owned(), v.as_bytes().to_vec(), lease)
}

#[tokio::test]
async fn revoking_a_lease_deletes_its_keys_at_one_revision() {
    let (_d, s) = open();
    let lease = s.lease_grant(60).await.unwrap();
    let other = s.lease_grant(60).await.unwrap();
    assert_ne!(lease, other);
    commit(
        &s,
        vec![
            put_leased("/a", "1", lease),
            put_leased("/b", "1", lease),
            put_leased("/c", "1", other),
            put("/d", "1"),
        ],
    )
    .await;
    // A plain put of a leased key releases it from the lease, as etcd's does.
    commit(&s, vec![put("/b", "2")]).await;
    let mut watch = s.watch("/", 0).await.unwrap();
    assert!(s.lease_revoke(lease).await.unwrap());
    let batch = watch.recv().await.unwrap().unwrap();
    assert_eq!(batch.revision, 3);
    assert_eq!(
        batch.events.iter().map(Event::key).collect::<Vec<_>>(),
        ["/a"]
    );
    let keys: Vec<String> = s
        .list("/")
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["/b", "/c", "/d"]);
    assert!(!s.lease_revoke(lease).await.unwrap(), "already revoked");
    assert_eq!(s.lease_keep_alive(lease).await.unwrap(), 0);
    assert_eq!(s.lease_time_to_live(lease).await.unwrap(), None);
    let st = s.lease_time_to_live(other).await.unwrap().unwrap();
    assert_eq!((st.granted_ttl, st.remaining), (60, 60));
}

#[tokio::test]
async fn a_put_bound_to_a_missing_lease_writes_nothing() {
    let (_d, s) = open();
    let before = s.revision().await.unwrap();
    let err = s
        .txn(Txn {
            compares: vec![],
            ops: vec![put("/a", "1"), put_leased("/b", "1", 42)],
            witness: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseNotFound(42)), "{err:?}");
    assert_eq!(s.revision().await.unwrap(), before);
    assert_eq!(s.get("/a").await.unwrap(), None);
}

#[tokio::test]
async fn an_unrenewed_lease_expires_and_a_renewed_one_does_not() {
    let (_d, s) = open();
    let short = s.lease_grant(1).await.unwrap();
    let kept = s.lease_grant(1).await.unwrap();
    commit(
        &s,
        vec![
            put_leased("/short", "1", short),
            put_leased("/kept", "1", kept),
        ],
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_millis(1_600);
    while std::time::Instant::now() < deadline {
        assert_eq!(s.lease_keep_alive(kept).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        s.get("/short").await.unwrap(),
        None,
        "expired within TTL + tick"
    );
    assert!(s.get("/kept").await.unwrap().is_some());
    assert_eq!(s.lease_keep_alive(short).await.unwrap(), 0);
}

#[tokio::test]
async fn a_lease_outlives_a_reopen_with_its_full_ttl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tether.redb");
    let lease = {
        let s = EmbeddedStore::open(&path).unwrap();
        let lease = s.lease_grant(2).await.unwrap();
        commit(&s, vec![put_leased("/a", "1", lease)]).await;
        lease
    };
    // The reaper thread holds the store weakly: the file is free once it notices.
    let s = loop {
        match EmbeddedStore::open(&path) {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let st = s.lease_time_to_live(lease).await.unwrap().unwrap();
    assert_eq!(st.remaining, 2);
    assert_eq!(s.lease_keep_alive(lease).await.unwrap(), 2);
    // A new grant after a reopen never reuses an id.
    assert!(s.lease_grant(5).await.unwrap() > lease);
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    assert_eq!(s.get("/a").await.unwrap(), None);
}

#[tokio::test]
async fn grants_beyond_the_limit_are_refused_until_one_ends() {
    let (_d, s) = open();
    s.inner.leases.limit_to(2);
    let a = s.lease_grant(60).await.unwrap();
    s.lease_grant(60).await.unwrap();
    let e = s.lease_grant(60).await.unwrap_err();
    assert!(matches!(e, StoreError::LeaseLimit(2)), "{e:?}");
    assert!(s.lease_revoke(a).await.unwrap());
    s.lease_grant(60).await.unwrap();
}
