//! The follower: keeps a [`Runtime`] on the source's latest revision. The only writer of the
//! node's snapshot. An explicit state machine (drawn in `docs/architecture.md`):
//!
//! ```text
//!  start ──(cache file: apply it, ready)──► Listing
//!  Listing ── list ok: apply, ready ──────► Watching { revision }
//!  Listing ── list failed ── backoff ─────► Listing
//!  Watching { r } ── watch(r + 1) ── batch at r' > r: apply ──► Watching { r' }
//!  Watching { r } ── watch ended / failed ── backoff ─────────► Watching { r }   (no re-list)
//!  Watching { r } ── compacted, or a batch at r' ≤ r ─────────► Listing        (at once)
//! ```
//!
//! A revision that does not validate is not applied: the previous snapshot keeps serving, and
//! the failure is logged and counted. An object that does not decode or validate is left out
//! and counted; later events still flow. The backoff ([`Backoff`]) is capped at
//! [`RETRY_CAP`], so once the source answers again the next change is applied within about
//! that long, however long the outage was; it resets only after a watch has worked for
//! [`Backoff::healthy`].

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tether_dataplane::runtime::Runtime;
use tokio::time::Instant;

use super::backoff::{Backoff, Streak};
use super::cache;
use super::fleet::Shared;
use super::shutdown::Shutdown;
use super::source::{Batch, Listed, Source, Watch};
use crate::convert::{self, Converted};
use crate::state::{DecodeError, State};
use crate::store::StoreError;

/// The longest wait between two attempts to reach the source.
pub const RETRY_CAP: Duration = Duration::from_millis(500);
/// The first wait.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// How long a watch must have worked for its end to reset the backoff.
const HEALTHY: Duration = Duration::from_secs(10);

/// The follower's backoff.
pub fn backoff() -> Backoff {
    Backoff::new(RETRY_FIRST, RETRY_CAP, HEALTHY)
}

/// Where the follower is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// List the whole configuration: at start, after compaction, after the store's revision
    /// went backwards (a restored store).
    Listing,
    /// Applied through `revision`: watch from `revision + 1`.
    Watching {
        /// The last applied (or seen) revision.
        revision: i64,
    },
}

/// Where the follower keeps its local copy, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The snapshot cache file.
    pub cache: Option<PathBuf>,
    /// A state from the cache stops counting as ready once the store last confirmed it this
    /// long ago (`None`: it stays ready however old).
    pub cache_max_age: Option<Duration>,
    /// Shared health: the node's fleet view, fed after each revision (`None`: every verdict
    /// is this node's own probes).
    pub shared: Option<Arc<Shared>>,
}

/// How often the cache file's time is moved forward while the store confirms an unchanged
/// state (the granularity of `--cache-max-age`).
const CACHE_TOUCH: Duration = Duration::from_secs(60);

/// Left-out objects logged per revision (all are counted).
const LOGGED_LEFT_OUT: usize = 8;

/// Applies a state to the runtime; false when it could not be applied.
///
/// A stored object that does not validate (written to the store by something other than a
/// control plane, or by an older version) is left out with a log line and a count in
/// `tether_invalid_objects_total` ([`convert::validate_leaving_out`]); a referrer of a
/// left-out object is left out too. One bad object does not stop every later change.
///
/// `converted` carries conversions from one revision to the next: only changed backends are
/// converted again.
pub fn apply(rt: &Runtime, state: &State, converted: &mut Converted) -> bool {
    rt.saw_revision(state.revision);
    let current = rt.snapshot();
    let set = state.resources();
    let validated =
        convert::validate_leaving_out(&set, Some(&current.directors), converted, |_| true);
    // Not held across the install: the replaced snapshot is freed off this path.
    drop(current);
    let rejected = |what: &str, e: &dyn std::fmt::Display| {
        rt.counters
            .rejected_revisions
            .fetch_add(1, Ordering::Relaxed);
        tracing::error!(revision = state.revision, error = %e, "{what}; keeping the previous snapshot");
        false
    };
    match validated {
        Ok((v, left_out)) => {
            rt.counters
                .invalid_objects
                .fetch_add(left_out.len() as u64, Ordering::Relaxed);
            // A few lines per revision, not one per object: a chain of 10,000 directors left
            // out must not flood the log at each revision.
            for e in left_out.iter().take(LOGGED_LEFT_OUT) {
                tracing::warn!(revision = state.revision, error = %e, "stored object is invalid; left out");
            }
            if left_out.len() > LOGGED_LEFT_OUT {
                tracing::warn!(
                    revision = state.revision,
                    more = left_out.len() - LOGGED_LEFT_OUT,
                    "more stored objects are invalid and left out"
                );
            }
            match rt.install(state.revision, v.config, v.directors) {
                Ok(()) => {
                    rt.set_config_revision(state.config_revision);
                    tracing::debug!(revision = state.revision, "applied");
                    true
                }
                Err(e) => rejected("revision not applied", &e),
            }
        }
        Err(e) => rejected("stored configuration is invalid", &e),
    }
}

/// The follower of one source.
#[derive(Debug)]
pub struct Follower<S> {
    source: S,
    rt: Arc<Runtime>,
    opts: Options,
    /// The configuration as last applied (or seen, for batches without resource changes).
    state: State,
    converted: Converted,
    listed: bool,
    backoff: Backoff,
    /// Failed attempts to reach the source in a row (logged once per outage).
    streak: Streak,
    /// When the cache file was last written or touched.
    cache_confirmed: Option<Instant>,
}

impl<S: Source> Follower<S> {
    /// A follower feeding `rt` from `source`.
    pub fn new(source: S, rt: Arc<Runtime>, opts: Options) -> Follower<S> {
        Follower {
            source,
            rt,
            opts,
            state: State::default(),
            converted: Converted::default(),
            listed: false,
            backoff: backoff(),
            streak: Streak::default(),
            cache_confirmed: None,
        }
    }

    /// Follows until `shutdown`.
    pub async fn run(mut self, shutdown: Shutdown) {
        self.start_from_cache();
        let mut phase = Phase::Listing;
        loop {
            let (next, failed) = tokio::select! {
                r = self.step(phase) => r,
                () = shutdown.wait() => return,
            };
            phase = next;
            if let Some(worked) = failed {
                let delay = self.backoff.after_failure(worked);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.wait() => return,
                }
            }
        }
    }

    /// Serves the cached state, if there is one, until the source answers.
    fn start_from_cache(&mut self) {
        let Some(path) = &self.opts.cache else {
            return;
        };
        match cache::read(path) {
            Ok(Some((s, confirmed))) => {
                if apply(&self.rt, &s, &mut self.converted) {
                    self.rt
                        .set_from_cache(self.opts.cache_max_age.map(|age| confirmed + age));
                    self.rt.set_ready();
                    let age = SystemTime::now()
                        .duration_since(confirmed)
                        .unwrap_or_default();
                    tracing::info!(revision = s.revision, cache = %path.display(), age = ?age, ready = self.rt.is_ready(), "serving the cached snapshot until the store answers");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "snapshot cache not used"),
        }
    }

    /// One phase's work: the next phase, and — after a failure — for how long what failed had
    /// worked (for the backoff).
    async fn step(&mut self, phase: Phase) -> (Phase, Option<Duration>) {
        match phase {
            Phase::Listing => match self.source.list().await {
                Ok(listed) => {
                    self.streak.succeeded("listing the store");
                    (self.listed(listed).await, None)
                }
                Err(e) => {
                    self.streak.failed("listing the store", &e);
                    (Phase::Listing, Some(Duration::ZERO))
                }
            },
            Phase::Watching { revision } => self.watch(revision).await,
        }
    }

    async fn listed(&mut self, listed: Listed) -> Phase {
        if self.listed {
            self.rt.counters.relists.fetch_add(1, Ordering::Relaxed);
        }
        self.listed = true;
        self.count_undecodable(listed.undecodable);
        let health = listed.health;
        self.state = listed.state;
        // A new store history may begin here (a restored store): revisions identify contents
        // only within one.
        self.converted = Converted::default();
        if self.state.write_open {
            // Listed between two parts of a split write: not a state any call asked for. What
            // is served stays; the write's last part (or its completion by a control plane)
            // comes through the watch.
            tracing::info!(
                revision = self.state.revision,
                "listed inside an unfinished split write; applying once it completes"
            );
            self.rt.saw_revision(self.state.revision);
        } else {
            if apply(&self.rt, &self.state, &mut self.converted) {
                self.save().await;
            }
            self.rt.mark_confirmed();
            self.rt.set_ready();
        }
        if let Some(s) = &self.opts.shared {
            s.listed(&self.rt, health);
        }
        Phase::Watching {
            revision: self.state.revision,
        }
    }

    async fn watch(&mut self, from: i64) -> (Phase, Option<Duration>) {
        let mut w = match self.source.watch(from + 1).await {
            Ok(w) => {
                self.streak.succeeded("watching the store");
                w
            }
            Err(StoreError::Compacted { .. }) => {
                tracing::warn!(revision = from, "history compacted; listing again");
                return (Phase::Listing, None);
            }
            Err(e) => {
                self.streak.failed("watching the store", &e);
                return (Phase::Watching { revision: from }, Some(Duration::ZERO));
            }
        };
        let opened = Instant::now();
        loop {
            let end = match w.next().await {
                Some(Ok(b)) if b.progress => {
                    self.confirmed();
                    continue;
                }
                Some(Ok(b)) if b.revision <= self.state.revision => {
                    tracing::warn!(
                        batch = b.revision,
                        applied = self.state.revision,
                        "the store's revision went backwards (restored?); listing again"
                    );
                    return (Phase::Listing, None);
                }
                Some(Ok(b)) => {
                    self.batch(b).await;
                    continue;
                }
                Some(Err(StoreError::Compacted { .. })) => {
                    tracing::warn!("watch history compacted; listing again");
                    return (Phase::Listing, None);
                }
                Some(Err(e)) => e.to_string(),
                None => "the watch ended".to_owned(),
            };
            tracing::warn!(error = %end, "watch ended; resuming");
            let revision = self.state.revision;
            return (Phase::Watching { revision }, Some(opened.elapsed()));
        }
    }

    /// One revision: its configuration changes, then (on the configuration as applied) its
    /// shared-health events.
    async fn batch(&mut self, mut b: Batch) {
        let health = std::mem::take(&mut b.health);
        // New backends need an owner and a verdict too.
        let config = !b.changes.is_empty();
        self.config_batch(b).await;
        if let Some(s) = &self.opts.shared
            && (config || !health.is_empty())
        {
            s.batch(&self.rt, health);
        }
    }

    async fn config_batch(&mut self, b: Batch) {
        if let Some(r) = b.serial_revision {
            self.state.serial_revision = r;
        }
        let was_open = self.state.write_open;
        if let Some(open) = b.write_open {
            self.state.write_open = open;
        }
        if self.state.write_open {
            // Inside a split write: its parts accumulate here, and are applied together with
            // its last.
            let errors = self.state.apply(b.revision, b.changes);
            self.count_undecodable(errors);
            self.rt.saw_revision(b.revision);
            return;
        }
        if was_open {
            // The last part: everything the write changed, at once.
            let errors = self.state.apply(b.revision, b.changes);
            self.count_undecodable(errors);
            self.apply_and_save(b.committed).await;
            return;
        }
        if b.changes.is_empty() {
            // Node registrations and the like: nothing to rebuild.
            self.state.revision = b.revision;
            self.rt.saw_revision(b.revision);
            self.confirmed();
            return;
        }
        let errors = self.state.apply(b.revision, b.changes);
        self.count_undecodable(errors);
        self.apply_and_save(b.committed).await;
    }

    /// Applies the state as it stands, saves it to the cache, and records the delay from
    /// `committed` (the write's commit time).
    async fn apply_and_save(&mut self, committed: Option<SystemTime>) {
        if apply(&self.rt, &self.state, &mut self.converted) {
            if let Some(t) = committed
                && let Ok(d) = SystemTime::now().duration_since(t)
            {
                self.rt.apply_delay.observe(d);
            }
            self.save().await;
        }
        self.rt.mark_confirmed();
        // A node that listed inside a split write becomes ready here.
        self.rt.set_ready();
    }

    fn count_undecodable(&self, errors: Vec<DecodeError>) {
        for e in errors {
            self.rt
                .counters
                .invalid_objects
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "stored object does not decode; left out");
        }
    }

    /// The store confirmed the applied state without changing it: so does the cache file,
    /// once a [`CACHE_TOUCH`].
    fn confirmed(&mut self) {
        self.rt.mark_confirmed();
        if let Some(p) = &self.opts.cache
            && self
                .cache_confirmed
                .is_some_and(|t| t.elapsed() >= CACHE_TOUCH)
        {
            self.cache_confirmed = Some(Instant::now());
            if let Err(e) = cache::touch(p) {
                tracing::warn!(error = %e, "snapshot cache not touched");
            }
        }
    }

    /// Writes the cache file, if there is one (a failure is logged: serving goes on).
    async fn save(&mut self) {
        if let Some(p) = &self.opts.cache {
            match cache::write(p.clone(), &self.state).await {
                Ok(()) => self.cache_confirmed = Some(Instant::now()),
                Err(e) => tracing::warn!(error = %e, "snapshot cache not written"),
            }
        }
    }
}
