//! Real etcd for tests: Debian's `etcd-server` (scripts/test installs it when missing) on free
//! loopback ports with its data in tmpfs, one member or three. Every member is killed when
//! dropped.

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free port below the kernel's ephemeral range (32768 and up on Linux), so that while a
/// member is down no port-0 listener or outgoing connection of a test running beside it can
/// take its port and keep it from starting again.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for _ in 0..SPAN {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + (seed % SPAN + step * 7) % SPAN).unwrap();
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// The etcd binary.
pub fn binary() -> PathBuf {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("etcd is not installed: run scripts/test (it installs Debian's etcd-server)")
}

/// One etcd member.
pub struct Member {
    pub name: String,
    pub client: u16,
    pub peer: u16,
    pub dir: PathBuf,
    cluster: String,
    child: Option<Child>,
}

impl Member {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    fn spawn(&mut self, state: &str) {
        let child = Command::new(binary())
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.dir)
            .args([
                "--listen-client-urls",
                &self.url(),
                "--advertise-client-urls",
                &self.url(),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", self.peer),
            ])
            .args([
                "--initial-cluster",
                &self.cluster,
                "--initial-cluster-state",
                state,
            ])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .arg("--experimental-watch-progress-notify-interval=1s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn("existing");
    }

    fn healthy(&self) -> bool {
        // etcd's /health answers {"health":"true"} once the member has a leader.
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.client)) else {
            return false;
        };
        use std::io::{Read, Write};
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.contains("\"health\":\"true\"")
    }

    pub fn wait_healthy(&self) {
        let start = Instant::now();
        while !self.healthy() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "etcd {} never became healthy",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An etcd cluster of `n` members, started and healthy.
pub struct Etcd {
    pub members: Vec<Member>,
}

impl Etcd {
    pub fn start(n: usize) -> Etcd {
        let tag = format!("tether-test-{}-{}", std::process::id(), free_port());
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                dir: PathBuf::from(format!("/dev/shm/{tag}-m{i}")),
                cluster: String::new(),
                child: None,
            })
            .collect();
        let cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.cluster = cluster.clone();
            m.spawn("new");
        }
        for m in &members {
            m.wait_healthy();
        }
        Etcd { members }
    }

    /// Every member's client URL, comma-separated.
    pub fn urls(&self) -> String {
        self.members
            .iter()
            .map(Member::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Etcd {
    /// The index of the current leader, asking each live member.
    pub async fn leader(&self) -> Option<usize> {
        use tether_proto::etcd::etcdserverpb as pb;
        for m in &self.members {
            let Ok(ch) = tonic::transport::Channel::from_shared(m.url())
                .ok()?
                .connect()
                .await
            else {
                continue;
            };
            let mut c = pb::maintenance_client::MaintenanceClient::new(ch);
            let Ok(r) = c.status(pb::StatusRequest {}).await else {
                continue;
            };
            let r = r.into_inner();
            let me = r.header.map(|h| h.member_id);
            if me == Some(r.leader) {
                return self.members.iter().position(|x| x.name == m.name);
            }
        }
        None
    }
}
