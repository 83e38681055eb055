//! A real DNS server on a loopback UDP port for the tests: answers `A` queries for one name
//! with the addresses it is told (TTL `ttl`), an empty NOERROR answer for that name's other
//! types, NXDOMAIN for everything else, and counts the `A` queries. Written by hand (RFC 1035
//! §4) because the tests need only this much of the protocol.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

pub struct DnsServer {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Vec<Ipv4Addr>>>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

/// The wire form of a name: length-prefixed lowercase labels, then the root.
fn encode(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend(label.to_ascii_lowercase().bytes());
    }
    out.push(0);
    out
}

impl DnsServer {
    pub async fn start(name: &str, addresses: &[Ipv4Addr], ttl: u32) -> DnsServer {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(addresses.to_vec()));
        let queries = Arc::new(AtomicUsize::new(0));
        let wanted = encode(name);
        let (a, q) = (Arc::clone(&answer), Arc::clone(&queries));
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                if let Some(reply) = reply(&buf[..n], &wanted, &a, &q, ttl) {
                    let _ = sock.send_to(&reply, from).await;
                }
            }
        });
        DnsServer {
            addr,
            answer,
            queries,
            task,
        }
    }

    /// From now on the name resolves to `addresses`.
    pub fn set(&self, addresses: &[Ipv4Addr]) {
        *self.answer.lock().unwrap() = addresses.to_vec();
    }

    /// Stops answering (queries then time out, as with a dead name server).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// `A` queries answered so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(
    q: &[u8],
    wanted: &[u8],
    answer: &Mutex<Vec<Ipv4Addr>>,
    queries: &AtomicUsize,
    ttl: u32,
) -> Option<Vec<u8>> {
    if q.len() < 12 || q[4..6] != [0, 1] {
        return None;
    }
    // The question: a name (labels, no compression in queries), then type and class.
    let mut i = 12;
    while *q.get(i)? != 0 {
        i += 1 + q[i] as usize;
    }
    let name_end = i + 1;
    let question = q.get(12..name_end + 4)?;
    let qtype = u16::from_be_bytes([q[name_end], q[name_end + 1]]);
    let ours = q[12..name_end].eq_ignore_ascii_case(wanted);
    let ips = if ours && qtype == 1 {
        queries.fetch_add(1, Ordering::SeqCst);
        answer.lock().unwrap().clone()
    } else {
        Vec::new()
    };
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&q[0..2]); // id
    // QR, opcode 0, AA, RD copied; RA; rcode NOERROR or NXDOMAIN.
    r.push(0x84 | (q[2] & 0x01));
    r.push(if ours { 0x80 } else { 0x83 });
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&(ips.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    for ip in ips {
        r.extend_from_slice(&[0xc0, 12]); // the name, by pointer to the question
        r.extend_from_slice(&[0, 1, 0, 1]); // A, IN
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&[0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}
