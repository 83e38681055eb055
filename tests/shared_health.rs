//! Shared health (issue 16) on a real etcd, through the real binaries: each backend is probed by
//! `k` owners, not by every node; the nodes agree on every key while a backend flaps; an owner
//! killed hands its backends over without flipping a verdict; with etcd down the nodes keep the
//! fleet verdict for the grace period, then probe locally, and converge again when it is back;
//! the admin override and drain behave as before.

#![allow(clippy::unwrap_used)] // test code: a failed setup should panic

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::etcd::Etcd;
use support::health::{self, Flippable};
use support::{ControlPlane, Tether, apply, metric};

/// Starts `n` data planes on `etcd`, each in `<dir>/dp<first + i>`, with `extra` flags.
async fn nodes(
    dir: &std::path::Path,
    etcd: &str,
    first: usize,
    n: usize,
    extra: &[&str],
) -> Vec<Tether> {
    let mut out = Vec::new();
    for i in first..first + n {
        out.push(dataplane(dir, etcd, i, extra).await);
    }
    out
}

async fn dataplane(dir: &std::path::Path, etcd: &str, i: usize, extra: &[&str]) -> Tether {
    Tether::dataplane_args(
        &dir.join(format!("dp{i}")),
        ["--etcd", etcd],
        true,
        &[],
        extra,
    )
    .await
}

async fn metrics(n: &Tether) -> String {
    n.admin_get("/metrics").await.1
}

/// Backends owned (probed for the fleet), summed over `nodes`.
async fn owned(nodes: &[Tether]) -> i64 {
    let mut sum = 0;
    for n in nodes {
        sum += metric(&metrics(n).await, "tether_health_owned_backends");
    }
    sum
}

async fn wait_owned(nodes: &[Tether], want: i64, limit: Duration) {
    let start = Instant::now();
    loop {
        let got = owned(nodes).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "owned backends summed over the nodes: {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_all_applied(nodes: &[Tether], revision: i64) {
    for n in nodes {
        n.wait_applied(revision).await;
    }
}

/// Whether `backend` is healthy on node `n` (its `/state`).
async fn healthy_on(n: &Tether, backend: &str) -> bool {
    backend_in(&n.state().await, backend)["healthy"] == true
}

/// Waits until every node sees `backend` as `healthy`; how long it took.
async fn wait_everywhere(
    nodes: &[Tether],
    backend: &str,
    healthy: bool,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    for n in nodes {
        while healthy_on(n, backend).await != healthy {
            assert!(
                start.elapsed() < limit,
                "{backend} never healthy={healthy} on every node within {limit:?}: {}",
                n.state().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    start.elapsed()
}

/// Probes each backend received over `period`.
async fn probes_over(bs: &[Flippable], period: Duration) -> Vec<usize> {
    let before: Vec<usize> = bs.iter().map(Flippable::probes).collect();
    tokio::time::sleep(period).await;
    bs.iter().zip(before).map(|(b, n)| b.probes() - n).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_backend_is_probed_by_k_owners_with_3_and_with_10_nodes() {
    let etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let bs = Flippable::several(6).await;
    let refs: Vec<&Flippable> = bs.iter().collect();
    let cp = ControlPlane::start(&dir.path().join("cp"), &etcd.urls()).await;
    let mut all = nodes(dir.path(), &etcd.urls(), 0, 3, &[]).await;
    let rev = apply(&cp.api, dir.path(), &health::config(&refs, "100ms"), false);
    wait_all_applied(&all, rev).await;
    // k = 2 (the default): 12 (backend, owner) pairs over the fleet.
    wait_owned(&all, 12, Duration::from_secs(10)).await;

    // One probe per owner per interval (100 ms, plus the probe's own time): about 20 in a
    // second for k = 2; 30 if every one of 3 nodes probed.
    let period = Duration::from_secs(3);
    let per_owner = 30.0;
    let check = |counts: &[usize], nodes: usize| {
        for (b, &n) in bs.iter().zip(counts) {
            let per_node = n as f64 / per_owner;
            assert!(
                (1.5..=2.4).contains(&per_node),
                "{}: {n} probes in {period:?} with {nodes} nodes: {per_node:.2} owners' worth, want 2",
                b.name
            );
        }
    };
    check(&probes_over(&bs, period).await, 3);

    // Seven more, one proxy thread each: still two owners per backend.
    all.extend(nodes(dir.path(), &etcd.urls(), 3, 7, &[]).await);
    wait_all_applied(&all, rev).await;
    wait_owned(&all, 12, Duration::from_secs(10)).await;
    check(&probes_over(&bs, period).await, 10);

    // Every node routes on the same verdicts; `tether health list` shows each backend's fleet
    // verdict and two owners' reports, and every node taking its verdicts from the fleet.
    let out = support::ok(&cp.api, &["health", "list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for b in v["backends"].as_array().unwrap() {
        assert_eq!(b["fleet"], "healthy", "{b}");
        assert_eq!(b["reports"].as_array().unwrap().len(), 2, "{b}");
    }
    let listed = v["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 10, "{v}");
    assert!(listed.iter().all(|n| n["health_source"] == "fleet"), "{v}");
    let table = support::ok(&cp.api, &["health", "list"]);
    assert!(
        table.contains("FLEET") && table.contains("OWNERS"),
        "{table}"
    );
    let sent: i64 = {
        let mut s = 0;
        for n in &all {
            s += metric(&metrics(n).await, "tether_health_probes_sent_total");
        }
        s
    };
    assert!(sent > 0);
}

/// Each node's answer for `key`, asked of all of them at once.
async fn ask_all(nodes: &[Tether], key: &str) -> Vec<String> {
    let (a, b, c) = tokio::join!(
        nodes[0].request(key),
        nodes[1].request(key),
        nodes[2].request(key)
    );
    [a, b, c]
        .into_iter()
        .map(|(s, body)| format!("{s} {body}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_out_of_step_agree_on_every_key_while_a_backend_flaps() {
    let etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let f = Flippable::start("flapper").await;
    let s1 = Flippable::start("s1").await;
    let s2 = Flippable::start("s2").await;
    let cp = ControlPlane::start(&dir.path().join("cp"), &etcd.urls()).await;
    let rev = apply(
        &cp.api,
        dir.path(),
        &health::config(&[&f, &s1, &s2], "500ms"),
        false,
    );
    // Probe loops out of step: the nodes start seconds apart, and one is stopped and started
    // again (a new node id) once the others run.
    let mut all = Vec::new();
    for i in 0..3 {
        all.push(dataplane(dir.path(), &etcd.urls(), i, &[]).await);
        tokio::time::sleep(Duration::from_millis(1300)).await;
    }
    support::sigterm(&all[1].child);
    let _ = all[1].child.wait();
    tokio::time::sleep(Duration::from_millis(700)).await;
    all[1] = dataplane(dir.path(), &etcd.urls(), 3, &[]).await;
    wait_all_applied(&all, rev).await;
    // The stopped node's lease was revoked: only the three live nodes own (3 backends × 2).
    wait_owned(&all, 6, Duration::from_secs(5)).await;
    for b in ["flapper", "s1", "s2"] {
        wait_everywhere(&all, b, true, Duration::from_secs(10)).await;
    }

    // The keys the flapper serves while healthy.
    let keys: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
    let mine: Vec<String> = {
        let mut v = Vec::new();
        for k in &keys {
            if all[0].request(k).await.1 == "flapper" {
                v.push(k.clone());
            }
        }
        v
    };
    assert!(mine.len() > 300, "{} keys on the flapper", mine.len());

    // Flap every 2.5 s for 30 s while sampling the flapper's keys on all three nodes at once.
    let stop = Arc::new(AtomicBool::new(false));
    let flapping = {
        let stop = Arc::clone(&stop);
        let f = &f;
        async move {
            let mut healthy = true;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                healthy = !healthy;
                f.set(healthy);
            }
            f.set(true);
        }
    };
    let start = Instant::now();
    let sampling = async {
        // (when, answers) for each sample.
        let mut samples: Vec<(Duration, Vec<String>)> = Vec::new();
        let mut i = 0;
        while start.elapsed() < Duration::from_secs(30) {
            let k = &mine[i % mine.len()];
            i += 1;
            let answers = ask_all(&all, k).await;
            samples.push((start.elapsed(), answers));
        }
        stop.store(true, Ordering::SeqCst);
        samples
    };
    let ((), samples) = tokio::join!(flapping, sampling);

    // A transition is the moment the first node's answer changes; samples in the 100 ms after
    // it are excused from agreeing.
    let mut last_view: Vec<Option<bool>> = vec![None; 3];
    let mut transitions: Vec<Duration> = Vec::new();
    let mut disagree = 0usize;
    let mut unexcused = Vec::new();
    for (at, answers) in &samples {
        let view: Vec<bool> = answers.iter().map(|a| a == "200 flapper").collect();
        let changed = view
            .iter()
            .zip(&last_view)
            .any(|(v, l)| l.is_some_and(|l| l != *v));
        let first_after_steady =
            last_view.iter().all(|l| l.is_some()) && last_view.windows(2).all(|w| w[0] == w[1]);
        if changed && first_after_steady {
            transitions.push(*at);
        }
        for (l, v) in last_view.iter_mut().zip(&view) {
            *l = Some(*v);
        }
        if answers.iter().any(|a| a != &answers[0]) {
            disagree += 1;
            let excused = transitions
                .last()
                .is_some_and(|t| *at >= *t && *at - *t <= Duration::from_millis(100));
            if !excused {
                unexcused.push((*at, answers.clone()));
            }
        }
    }
    let agreement = 1.0 - disagree as f64 / samples.len() as f64;
    eprintln!(
        "{} samples, {} transitions, {disagree} disagreeing ({:.4}% agreement)",
        samples.len(),
        transitions.len(),
        agreement * 100.0
    );
    assert!(
        transitions.len() >= 8,
        "the flapper flapped: {transitions:?}"
    );
    assert!(samples.len() > 2000, "{} samples", samples.len());
    assert!(
        unexcused.is_empty(),
        "disagreements outside 100 ms of a transition: {:?}",
        &unexcused[..unexcused.len().min(5)]
    );
    assert!(agreement >= 0.999, "agreement {agreement}");
}

/// The nodes that own `backend` (its `/state`), by index in `nodes`.
async fn owners_of(nodes: &[Tether], backend: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let s = n.state().await;
        let owned = s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["name"] == backend && b["probe_owned"] == true);
        if owned {
            out.push(i);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_hands_its_backends_over_without_flipping_a_verdict() {
    let etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let bs = Flippable::several(6).await;
    let refs: Vec<&Flippable> = bs.iter().collect();
    let cp = ControlPlane::start(&dir.path().join("cp"), &etcd.urls()).await;
    // k = 1: a dead owner leaves its backends with no live prober and, once its lease expires,
    // no report at all until the new owner's first: with the default `initial` a fresh window
    // is sick, so only the dead owner's last word keeps the verdicts from flipping.
    let mut all = nodes(dir.path(), &etcd.urls(), 0, 3, &["--health-owners", "1"]).await;
    let interval = Duration::from_millis(200);
    let rev = apply(&cp.api, dir.path(), &health::config(&refs, "200ms"), false);
    wait_all_applied(&all, rev).await;
    wait_owned(&all, 6, Duration::from_secs(10)).await;
    for b in &bs {
        wait_everywhere(&all, &b.name, true, Duration::from_secs(10)).await;
    }
    // Every owner's first report is stored (the nodes route on their own probes until they
    // listed the fleet, and a fresh owner reports after its first probe on fleet health):
    // this is the handover from a last word. (Without one — an owner that dies before it
    // reports — the new owner starts from the verdict it routes on: a unit test of
    // `BackendRuntime::set_fleet`.)
    support::wait_until("a report per backend", Duration::from_secs(10), || {
        let out = support::ok(&cp.api, &["health", "list", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["reports"].as_array().unwrap().len() == 1 && b["fleet"] == "healthy")
    })
    .await;
    // The victim: the owner of b0.
    let victim = owners_of(&all, "b0").await;
    assert_eq!(victim.len(), 1, "one owner of b0: {victim:?}");
    let victim = victim[0];
    let theirs: Vec<usize> = {
        let mut v = Vec::new();
        for (i, b) in bs.iter().enumerate() {
            if owners_of(&all, &b.name).await == [victim] {
                v.push(i);
            }
        }
        v
    };
    all[victim].kill9();
    let killed = Instant::now();
    let mut live: Vec<Tether> = all
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, t)| t)
        .collect();
    // b0 goes sick right after; the others stay healthy.
    bs[0].set(false);
    // Every health change is counted: the others' counts must not move, however briefly a
    // verdict might flip.
    let others = async |live: &[Tether]| -> Vec<i64> {
        let mut out = Vec::new();
        for n in live {
            let m = metrics(n).await;
            for b in &bs[1..] {
                out.push(metric(
                    &m,
                    &format!("tether_health_transitions_total{{backend=\"{}\"}}", b.name),
                ));
            }
        }
        out
    };
    let counted = others(&live).await;

    // Within the lease TTL (12 s) and an interval, every backend has a live owner again, and
    // b0 is sick everywhere within that plus its threshold; no other verdict flipped meanwhile.
    let bound = Duration::from_secs(12) + interval;
    let sick_bound = bound + 2 * interval + Duration::from_millis(500);
    let (mut b0_sick_at, mut covered_at) = (None, None);
    loop {
        for n in &live {
            let s = n.state().await;
            for b in s["backends"].as_array().unwrap() {
                if b["name"] != "b0" {
                    assert_eq!(b["healthy"], true, "a verdict flipped: {s}");
                }
            }
        }
        if b0_sick_at.is_none() {
            let mut sick = true;
            for n in &live {
                sick &= !healthy_on(n, "b0").await;
            }
            if sick {
                b0_sick_at = Some(killed.elapsed());
            }
        }
        if covered_at.is_none() {
            let mut covered = true;
            for i in &theirs {
                covered &= !owners_of(&live, &bs[*i].name).await.is_empty();
            }
            if covered {
                covered_at = Some(killed.elapsed());
            }
        }
        if covered_at.is_some() && b0_sick_at.is_some() {
            break;
        }
        assert!(
            killed.elapsed() < sick_bound,
            "after {:?}: covered at {covered_at:?}, b0 sick at {b0_sick_at:?}",
            killed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("new owners after {covered_at:?}, b0 marked sick after {b0_sick_at:?}");
    assert!(
        covered_at.unwrap() <= bound,
        "new owners after {covered_at:?}"
    );
    assert!(b0_sick_at.unwrap() <= sick_bound);
    // The stale owner is gone from the registrations: 2 live nodes own 6 backends between them.
    wait_owned(&live, 6, Duration::from_secs(2)).await;
    // A probe interval or two for the new owners' first reports; no other verdict moved.
    tokio::time::sleep(3 * interval).await;
    assert_eq!(
        others(&live).await,
        counted,
        "a verdict flipped during the handover"
    );
    // And b0 recovers through its new owner.
    bs[0].set(true);
    wait_everywhere(&live, "b0", true, Duration::from_secs(5)).await;
    live.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_nodes_keep_the_fleet_verdict_for_the_grace_then_probe_locally() {
    let mut etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let a = Flippable::start("a").await;
    let b = Flippable::start("b").await;
    let cp = ControlPlane::start(&dir.path().join("cp"), &etcd.urls()).await;
    let grace = Duration::from_secs(3);
    let all = nodes(
        dir.path(),
        &etcd.urls(),
        0,
        3,
        &["--shared-health-grace", "3s"],
    )
    .await;
    let rev = apply(
        &cp.api,
        dir.path(),
        &health::config(&[&a, &b], "200ms"),
        false,
    );
    wait_all_applied(&all, rev).await;
    wait_owned(&all, 4, Duration::from_secs(10)).await;
    wait_everywhere(&all, "a", true, Duration::from_secs(10)).await;
    wait_everywhere(&all, "b", true, Duration::from_secs(10)).await;
    // Every node — the owners too — has the fleet's verdict (an owner routes on its own window
    // until its first report comes back): the outage keeps a last word, not an owner's probe.
    let start = Instant::now();
    for n in &all {
        loop {
            let state = n.state().await;
            if ["a", "b"]
                .iter()
                .all(|b| backend_in(&state, b)["probe_fleet"] == true)
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no fleet verdict on every node: {state}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    etcd.members[0].kill();
    let down = Instant::now();
    // a goes sick during the outage: owners cannot publish it, so every node keeps routing on
    // the fleet's last verdict (healthy) for the grace period…
    a.set(false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for n in &all {
        let state = n.state().await;
        assert!(
            backend_in(&state, "a")["healthy"] == true,
            "fleet verdict kept during the grace: {state}"
        );
        assert_eq!(n.state().await["health_source"], "fleet");
    }
    // …then probes locally: every node marks a sick on its own, and says so.
    wait_everywhere(&all, "a", false, grace + Duration::from_secs(3)).await;
    assert!(down.elapsed() >= grace, "switched before the grace ended");
    for n in &all {
        let m = metrics(n).await;
        assert_eq!(
            metric(&m, "tether_health_source{source=\"local\"}"),
            1,
            "{m}"
        );
        let age: f64 = m
            .lines()
            .find_map(|l| l.strip_prefix("tether_store_contact_age_seconds "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no contact age in {m}"));
        assert!(age >= grace.as_secs_f64(), "contact age {age}");
        assert!(healthy_on(n, "b").await);
    }

    // etcd back: the nodes return to the fleet verdict, which the owners now publish.
    etcd.members[0].restart();
    etcd.members[0].wait_healthy();
    for n in &all {
        wait_state(n, Duration::from_secs(20), |s| {
            s["health_source"] == "fleet"
        })
        .await;
    }
    wait_everywhere(&all, "a", false, Duration::from_secs(5)).await;
    a.set(true);
    wait_everywhere(&all, "a", true, Duration::from_secs(5)).await;
    let out = support::ok(&cp.api, &["health", "list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ha = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "a")
        .unwrap()
        .clone();
    assert_eq!(ha["fleet"], "healthy", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_override_and_drain_win_on_every_node() {
    let etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let a = Flippable::start("a").await;
    let b = Flippable::start("b").await;
    let cp = ControlPlane::start(&dir.path().join("cp"), &etcd.urls()).await;
    let all = nodes(dir.path(), &etcd.urls(), 0, 3, &[]).await;
    let yaml = health::config(&[&a, &b], "200ms");
    let rev = apply(&cp.api, dir.path(), &yaml, false);
    wait_all_applied(&all, rev).await;
    wait_everywhere(&all, "a", true, Duration::from_secs(10)).await;
    wait_everywhere(&all, "b", true, Duration::from_secs(10)).await;
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let everywhere = |want: &'static str| {
        let (all, keys) = (&all, &keys);
        async move {
            for n in all {
                let got = n.map(keys).await;
                assert!(
                    got.iter().all(|x| x == want),
                    "every key on {want}: {got:?}"
                );
            }
        }
    };

    // Sick by the admin although its probes pass.
    support::ok(&cp.api, &["health", "set", "a", "sick"]);
    wait_everywhere(&all, "a", false, Duration::from_secs(5)).await;
    everywhere("b").await;
    // Healthy by the admin although its probes fail (and the fleet verdict says sick).
    support::ok(&cp.api, &["health", "set", "a", "healthy"]);
    a.set(false);
    support::ok(&cp.api, &["health", "set", "b", "sick"]);
    wait_everywhere(&all, "a", true, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    everywhere("a").await;
    // Back to the probes: the fleet's verdict on a (sick) holds everywhere.
    support::ok(&cp.api, &["health", "set", "a", "auto"]);
    support::ok(&cp.api, &["health", "set", "b", "auto"]);
    wait_everywhere(&all, "a", false, Duration::from_secs(5)).await;
    everywhere("b").await;
    a.set(true);
    wait_everywhere(&all, "a", true, Duration::from_secs(5)).await;

    // Drain: new requests avoid a on every node.
    let drained = yaml.replacen("    probe: hc\n", "    probe: hc\n    drain: true\n", 1);
    let rev = apply(&cp.api, dir.path(), &drained, false);
    wait_all_applied(&all, rev).await;
    everywhere("b").await;
}

/// `backend`'s entry in a `/state`.
fn backend_in<'a>(s: &'a serde_json::Value, backend: &str) -> &'a serde_json::Value {
    s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == backend)
        .unwrap_or_else(|| panic!("no {backend} in {s}"))
}

/// `backend`'s entry in node `n`'s `/state`.
async fn backend_state(n: &Tether, backend: &str) -> serde_json::Value {
    backend_in(&n.state().await, backend).clone()
}

/// Polls node `n`'s `/state` until `ok` holds, for up to `limit`.
async fn wait_state(n: &Tether, limit: Duration, ok: impl Fn(&serde_json::Value) -> bool) {
    let start = Instant::now();
    loop {
        let s = n.state().await;
        if ok(&s) {
            return;
        }
        assert!(start.elapsed() < limit, "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_the_control_plane_takes_the_fleet_verdict_and_probes_only_what_nobody_reports()
 {
    let etcd = Etcd::start(1);
    let dir = tempfile::tempdir().unwrap();
    let a = Flippable::start("a").await;
    let cp = ControlPlane::start(&dir.path().join("cp"), &etcd.urls()).await;
    let rev = apply(&cp.api, dir.path(), &health::config(&[&a], "200ms"), false);
    let f = Tether::dataplane_from(&dir.path().join("f"), &cp.api).await;
    f.wait_applied(rev).await;
    wait_state(&f, Duration::from_secs(5), |s| {
        s["health_source"] == "fleet"
    })
    .await;

    // No node on etcd, so no owner reports on a: the follower probes it alone.
    assert_eq!(backend_state(&f, "a").await["probe_role"], "alone");
    a.set(false);
    wait_everywhere(std::slice::from_ref(&f), "a", false, Duration::from_secs(5)).await;
    a.set(true);
    wait_everywhere(std::slice::from_ref(&f), "a", true, Duration::from_secs(5)).await;

    // A node on etcd joins and owns a: the follower now follows its reports and stops probing.
    let n = dataplane(dir.path(), &etcd.urls(), 0, &[]).await;
    wait_state(&f, Duration::from_secs(10), |s| {
        backend_in(s, "a")["probe_role"] == "follow"
    })
    .await;
    assert_eq!(backend_state(&n, "a").await["probe_role"], "own");
    let sent = metric(&metrics(&f).await, "tether_health_probes_sent_total");
    let both = [n, f];
    a.set(false);
    wait_everywhere(&both, "a", false, Duration::from_secs(5)).await;
    a.set(true);
    wait_everywhere(&both, "a", true, Duration::from_secs(5)).await;
    // At most the probe that was in flight when the first report arrived.
    let after = metric(&metrics(&both[1]).await, "tether_health_probes_sent_total");
    assert!(
        after <= sent + 1,
        "the follower kept probing: {sent} → {after}"
    );
    assert_eq!(both[1].state().await["health_source"], "fleet");
}
