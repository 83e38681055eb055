//! The node agent's transitions, with paused time and a scripted source.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_dataplane::runtime::Runtime;
use tether_proto::keys::Kind;
use tether_proto::v1;
use tokio::sync::mpsc;

use super::follower::{Follower, Options, RETRY_CAP};
use super::shutdown::Shutdown;
use super::source::{Batch, Listed, Source, Watch};
use crate::state::{Change, DecodeError, PutResource, State};
use crate::store::StoreError;

type BatchTx = mpsc::UnboundedSender<Result<Batch, StoreError>>;

/// What the follower asked of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    List,
    Watch(i64),
}

#[derive(Debug, Default)]
struct Script {
    lists: VecDeque<Result<Listed, StoreError>>,
    watches: VecDeque<Result<mpsc::UnboundedReceiver<Result<Batch, StoreError>>, StoreError>>,
    calls: Vec<Call>,
}

/// A source that answers from a script; once the script runs out, it is unavailable.
#[derive(Debug, Clone, Default)]
struct Scripted(Arc<Mutex<Script>>);

fn down() -> StoreError {
    StoreError::Unavailable("scripted outage".into())
}

impl Scripted {
    fn list(&self, r: Result<Listed, StoreError>) -> &Self {
        self.0.lock().unwrap().lists.push_back(r);
        self
    }
    fn list_state(&self, state: State) -> &Self {
        self.list(Ok(Listed {
            state,
            ..Listed::default()
        }))
    }
    /// A watch that delivers what is sent on the returned sender.
    fn watch(&self) -> BatchTx {
        let (tx, rx) = mpsc::unbounded_channel();
        self.0.lock().unwrap().watches.push_back(Ok(rx));
        tx
    }
    fn watch_fails(&self, e: StoreError) -> &Self {
        self.0.lock().unwrap().watches.push_back(Err(e));
        self
    }
    fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().calls.clone()
    }
}

#[derive(Debug)]
struct ScriptedWatch(mpsc::UnboundedReceiver<Result<Batch, StoreError>>);

impl Watch for ScriptedWatch {
    async fn next(&mut self) -> Option<Result<Batch, StoreError>> {
        self.0.recv().await
    }
}

impl Source for Scripted {
    type Watch = ScriptedWatch;
    async fn list(&self) -> Result<Listed, StoreError> {
        let mut s = self.0.lock().unwrap();
        s.calls.push(Call::List);
        s.lists.pop_front().unwrap_or_else(|| Err(down()))
    }
    async fn watch(&self, from: i64) -> Result<ScriptedWatch, StoreError> {
        let mut s = self.0.lock().unwrap();
        s.calls.push(Call::Watch(from));
        s.watches
            .pop_front()
            .unwrap_or_else(|| Err(down()))
            .map(ScriptedWatch)
    }
}

fn backend(name: &str, revision: i64) -> v1::Backend {
    v1::Backend {
        name: name.into(),
        address: "127.0.0.1:1".into(),
        revision,
        ..Default::default()
    }
}

fn state(revision: i64, backends: &[&str]) -> State {
    let mut s = State {
        revision,
        config_revision: revision,
        ..State::default()
    };
    for b in backends {
        s.backends.put((*b).into(), backend(b, revision));
    }
    s
}

fn put(b: v1::Backend) -> Change {
    Change::Put {
        resource: v1::watch_event::Resource::Backend(b),
        created: true,
    }
}

fn batch(revision: i64, changes: Vec<Change>) -> Result<Batch, StoreError> {
    Ok(Batch {
        revision,
        changes,
        ..Batch::default()
    })
}

/// Backend names of the applied snapshot, and its revision.
fn applied(rt: &Runtime) -> (i64, Vec<String>) {
    let snap = rt.snapshot();
    let names = snap
        .config
        .backends
        .iter()
        .map(|b| b.name.clone())
        .collect();
    (snap.revision, names)
}

fn start(source: &Scripted, opts: Options) -> (Arc<Runtime>, tokio::sync::watch::Sender<bool>) {
    let rt = Runtime::new();
    let (tx, shutdown) = Shutdown::channel();
    tokio::spawn(Follower::new(source.clone(), Arc::clone(&rt), opts).run(shutdown));
    (rt, tx)
}

/// Lets the spawned tasks run until they wait (for time that is paused, or for input).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_first_list_is_retried_and_readiness_waits_for_it() {
    let src = Scripted::default();
    src.list(Err(down())).list_state(state(5, &["a"]));
    let _w = src.watch();
    let (rt, _stop) = start(&src, Options::default());
    settle().await;
    assert!(!rt.is_ready(), "ready before anything was listed");
    assert_eq!(src.calls(), [Call::List]);
    tokio::time::sleep(RETRY_CAP).await;
    settle().await;
    assert!(rt.is_ready());
    assert_eq!(applied(&rt), (5, vec!["a".to_owned()]));
    assert_eq!(src.calls(), [Call::List, Call::List, Call::Watch(6)]);
}

#[tokio::test(start_paused = true)]
async fn an_ended_watch_resumes_after_the_last_applied_revision_without_listing() {
    let src = Scripted::default();
    src.list_state(state(5, &["a"]));
    let w1 = src.watch();
    let _w2 = src.watch();
    let (rt, _stop) = start(&src, Options::default());
    settle().await;
    w1.send(batch(7, vec![put(backend("b", 7))])).unwrap();
    // A batch without resource changes (a node record) still moves the revision.
    w1.send(batch(9, vec![])).unwrap();
    drop(w1);
    tokio::time::sleep(RETRY_CAP).await;
    settle().await;
    assert_eq!(applied(&rt), (7, vec!["a".to_owned(), "b".to_owned()]));
    assert_eq!(rt.config_revision(), 7);
    assert_eq!(
        src.calls(),
        [Call::List, Call::Watch(6), Call::Watch(10)],
        "resumed from the last seen revision + 1"
    );
    assert_eq!(rt.counters.relists.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn compaction_lists_again() {
    let compacted = || StoreError::Compacted {
        requested: 6,
        compact_revision: 8,
    };
    let src = Scripted::default();
    src.list_state(state(5, &["a"]))
        .watch_fails(compacted())
        .list_state(state(12, &["a", "c"]));
    let w = src.watch();
    let (rt, _stop) = start(&src, Options::default());
    settle().await;
    assert_eq!(applied(&rt), (12, vec!["a".to_owned(), "c".to_owned()]));
    // Compacted in the middle of a watch too.
    src.list_state(state(20, &["d"]));
    let _w = src.watch();
    w.send(Err(compacted())).unwrap();
    settle().await;
    assert_eq!(applied(&rt).0, 20);
    assert_eq!(
        src.calls(),
        [
            Call::List,
            Call::Watch(6),
            Call::List,
            Call::Watch(13),
            Call::List,
            Call::Watch(21)
        ]
    );
    assert_eq!(rt.counters.relists.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn a_revision_that_went_backwards_lists_again() {
    let src = Scripted::default();
    src.list_state(state(50, &["a"]));
    let w = src.watch();
    src.list_state(state(4, &["restored"]));
    let _w2 = src.watch();
    let (rt, _stop) = start(&src, Options::default());
    settle().await;
    // The store was restored from an older backup: its revisions start over.
    w.send(batch(3, vec![put(backend("x", 3))])).unwrap();
    settle().await;
    assert_eq!(applied(&rt), (4, vec!["restored".to_owned()]));
    assert_eq!(
        src.calls(),
        [Call::List, Call::Watch(51), Call::List, Call::Watch(5)]
    );
}

#[tokio::test(start_paused = true)]
async fn an_undecodable_object_is_left_out_and_later_events_still_flow() {
    let src = Scripted::default();
    src.list(Ok(Listed {
        state: state(5, &["a"]),
        undecodable: vec![DecodeError {
            kind: Kind::Backend,
            name: "z".into(),
            message: "bad".into(),
        }],
        health: Vec::new(),
    }));
    let w = src.watch();
    let (rt, _stop) = start(&src, Options::default());
    settle().await;
    assert_eq!(rt.counters.invalid_objects.load(Ordering::Relaxed), 1);
    // "a" stops decoding: it is left out, not kept as it was.
    w.send(batch(
        6,
        vec![Change::Undecodable(DecodeError {
            kind: Kind::Backend,
            name: "a".into(),
            message: "bad".into(),
        })],
    ))
    .unwrap();
    // An object that decodes but does not validate: left out, counted.
    let mut bad = backend("bad", 7);
    bad.address = "no port".into();
    w.send(batch(7, vec![put(bad), put(backend("b", 7))]))
        .unwrap();
    w.send(batch(8, vec![put(backend("c", 8))])).unwrap();
    settle().await;
    assert_eq!(applied(&rt), (8, vec!["b".to_owned(), "c".to_owned()]));
    assert_eq!(rt.counters.invalid_objects.load(Ordering::Relaxed), 4);
}

/// A snapshot cache of revision 5 (backend `cached`), last confirmed `age` ago.
async fn cached(age: Duration) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("snapshot.cache");
    super::cache::write(cache.clone(), &state(5, &["cached"]))
        .await
        .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&cache)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - age)
        .unwrap();
    (dir, cache)
}

#[tokio::test(start_paused = true)]
async fn a_node_starts_from_its_cache_while_the_source_is_down_then_catches_up() {
    let (_dir, cache) = cached(Duration::ZERO).await;
    let src = Scripted::default();
    src.list(Err(down()))
        .list(Err(down()))
        .list_state(state(9, &["fresh"]));
    let _w = src.watch();
    let (rt, _stop) = start(
        &src,
        Options {
            cache: Some(cache),
            cache_max_age: Some(Duration::from_secs(3600)),
            shared: None,
        },
    );
    settle().await;
    assert!(rt.is_ready() && rt.from_cache());
    assert_eq!(applied(&rt), (5, vec!["cached".to_owned()]));
    tokio::time::sleep(RETRY_CAP * 2).await;
    settle().await;
    assert_eq!(applied(&rt), (9, vec!["fresh".to_owned()]));
}

#[tokio::test(start_paused = true)]
async fn a_cache_older_than_its_maximum_age_serves_but_is_not_ready() {
    // Last confirmed by the store two hours ago.
    let (_dir, cache) = cached(Duration::from_secs(7200)).await;
    let src = Scripted::default();
    src.list(Err(down())).list_state(state(9, &["fresh"]));
    let _w = src.watch();
    let (rt, _stop) = start(
        &src,
        Options {
            cache: Some(cache),
            cache_max_age: Some(Duration::from_secs(3600)),
            shared: None,
        },
    );
    settle().await;
    assert_eq!(applied(&rt), (5, vec!["cached".to_owned()]), "still served");
    assert!(rt.from_cache() && rt.cache_is_stale() && !rt.is_ready());
    // The store answers: ready, whatever the cache's age.
    tokio::time::sleep(RETRY_CAP * 2).await;
    settle().await;
    assert_eq!(applied(&rt), (9, vec!["fresh".to_owned()]));
    assert!(rt.is_ready() && !rt.from_cache());
}

#[tokio::test(start_paused = true)]
async fn a_flapping_watch_is_retried_at_the_cap_not_every_first_delay() {
    let src = Scripted::default();
    src.list_state(state(5, &["a"]));
    let (_rt, _stop) = start(&src, Options::default());
    // Every watch opens and dies at once.
    for _ in 0..20 {
        drop(src.watch());
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let watches = src
        .calls()
        .iter()
        .filter(|c| matches!(c, Call::Watch(_)))
        .count();
    // 100 + 200 + 400 ms, then one every 250-500 ms: at most ~20 in 5 s, not 50.
    assert!((8..=21).contains(&watches), "{watches} watches in 5 s");
}

#[tokio::test(start_paused = true)]
async fn the_supervisor_restarts_a_dead_follower_and_clears_readiness_meanwhile() {
    let src = Scripted::default();
    // The first follower lists and then dies (its watch panics the task).
    src.list_state(state(5, &["a"]));
    let rt = Runtime::new();
    let (_stop, shutdown) = Shutdown::channel();
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    {
        let rt2 = Arc::clone(&rt);
        let src = src.clone();
        let runs = Arc::clone(&runs);
        tokio::spawn(super::supervise::supervise(
            "follower",
            shutdown,
            super::down(&rt, super::Task::Follower),
            move |s| {
                let n = runs.fetch_add(1, Ordering::Relaxed);
                let follower = Follower::new(src.clone(), Arc::clone(&rt2), Options::default());
                async move {
                    if n == 0 {
                        // Runs until listed, then fails.
                        tokio::select! {
                            () = follower.run(s) => {}
                            () = tokio::time::sleep(Duration::from_millis(10)) => {}
                        }
                        panic!("follower died");
                    }
                    follower.run(s).await;
                }
            },
        ));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(rt.is_ready());
    tokio::time::sleep(Duration::from_millis(10)).await;
    settle().await;
    assert!(
        !rt.is_ready(),
        "readiness stays cleared while the follower is down"
    );
    assert_eq!(rt.counters.follower_restarts.load(Ordering::Relaxed), 1);
    src.list_state(state(6, &["a", "b"]));
    let _w = src.watch();
    tokio::time::sleep(Duration::from_millis(200)).await;
    settle().await;
    assert_eq!(runs.load(Ordering::Relaxed), 2);
    assert!(rt.is_ready(), "the restarted follower listed and is ready");
    assert_eq!(applied(&rt).0, 6);
}

fn part(revision: i64, changes: Vec<Change>, open: bool) -> Result<Batch, StoreError> {
    Ok(Batch {
        revision,
        changes,
        serial_revision: Some(revision),
        write_open: Some(open),
        ..Batch::default()
    })
}

#[tokio::test(start_paused = true)]
async fn a_split_write_is_applied_at_its_last_part_and_a_listing_inside_one_waits() {
    let src = Scripted::default();
    src.list_state(state(5, &["a"]));
    let w = src.watch();
    let (rt, _stop) = start(&src, Options::default());
    settle().await;
    assert_eq!(applied(&rt), (5, vec!["a".to_owned()]));
    w.send(part(6, vec![put(backend("b", 6))], true)).unwrap();
    w.send(part(7, vec![put(backend("c", 7))], true)).unwrap();
    settle().await;
    assert_eq!(
        applied(&rt).0,
        5,
        "nothing of the write before its last part"
    );
    w.send(part(8, vec![put(backend("d", 8))], false)).unwrap();
    settle().await;
    assert_eq!(
        applied(&rt),
        (
            8,
            vec!["a", "b", "c", "d"]
                .into_iter()
                .map(String::from)
                .collect()
        )
    );

    // A node that lists inside a split write serves nothing of it, and is not ready, until
    // the write completes.
    let src = Scripted::default();
    let mut inside = state(7, &["a", "b"]);
    inside.write_open = true;
    src.list_state(inside);
    let w = src.watch();
    let (rt, _stop) = start(&src, Options::default());
    settle().await;
    assert!(!rt.is_ready());
    assert_eq!(applied(&rt).0, 0);
    w.send(part(8, vec![put(backend("c", 8))], false)).unwrap();
    settle().await;
    assert!(rt.is_ready());
    assert_eq!(
        applied(&rt),
        (
            8,
            vec!["a", "b", "c"].into_iter().map(String::from).collect()
        )
    );
}
