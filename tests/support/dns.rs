//! A real DNS server on a loopback UDP port for the tests: answers `A` queries for one name
//! with the addresses it is told (TTL `ttl`), an empty NOERROR answer for that name's other
//! types, `SRV` queries for one further name when told ([`DnsServer::set_srv`]), NXDOMAIN
//! for everything else, and counts the `A` queries. Written by hand (RFC 1035
//! §4) because the tests need only this much of the protocol.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// An SRV name (wire form) and its records: (port, target).
type Srv = Option<(Vec<u8>, Vec<(u16, String)>)>;

pub struct DnsServer {
    pub addr: SocketAddr,
    answer: Arc<Mutex<Vec<Ipv4Addr>>>,
    srv: Arc<Mutex<Srv>>,
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
        DnsServer::start_at("127.0.0.1:0".parse().unwrap(), name, addresses, ttl).await
    }

    /// [`DnsServer::start`] on `addr`.
    pub async fn start_at(
        addr: SocketAddr,
        name: &str,
        addresses: &[Ipv4Addr],
        ttl: u32,
    ) -> DnsServer {
        let sock = UdpSocket::bind(addr).await.unwrap();
        let addr = sock.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(addresses.to_vec()));
        let srv: Arc<Mutex<Srv>> = Arc::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let wanted = encode(name);
        let (a, q, s) = (Arc::clone(&answer), Arc::clone(&queries), Arc::clone(&srv));
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                if let Some(reply) = reply(&buf[..n], &wanted, &a, &s, &q, ttl) {
                    let _ = sock.send_to(&reply, from).await;
                }
            }
        });
        DnsServer {
            addr,
            answer,
            srv,
            queries,
            task,
        }
    }

    /// From now on `name` has these SRV records (port, target).
    pub fn set_srv(&self, name: &str, records: &[(u16, &str)]) {
        *self.srv.lock().unwrap() = Some((
            encode(name),
            records.iter().map(|(p, t)| (*p, (*t).to_owned())).collect(),
        ));
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
    srv: &Mutex<Srv>,
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
    let qname = &q[12..name_end];
    // SRV: priority 0, weight 0, the port, the target (uncompressed).
    let records: Option<Vec<(u16, Vec<u8>)>> = srv.lock().unwrap().as_ref().and_then(|(n, r)| {
        (qtype == 33 && qname.eq_ignore_ascii_case(n)).then(|| {
            r.iter()
                .map(|(port, target)| {
                    let mut d = vec![0, 0, 0, 0];
                    d.extend_from_slice(&port.to_be_bytes());
                    d.extend(encode(target));
                    (33, d)
                })
                .collect()
        })
    });
    let ours = records.is_some() || qname.eq_ignore_ascii_case(wanted);
    let rdatas: Vec<(u16, Vec<u8>)> = match records {
        Some(r) => r,
        None if ours && qtype == 1 => {
            queries.fetch_add(1, Ordering::SeqCst);
            answer
                .lock()
                .unwrap()
                .iter()
                .map(|ip| (1, ip.octets().to_vec()))
                .collect()
        }
        None => Vec::new(),
    };
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&q[0..2]); // id
    // QR, opcode 0, AA, RD copied; RA; rcode NOERROR or NXDOMAIN.
    r.push(0x84 | (q[2] & 0x01));
    r.push(if ours { 0x80 } else { 0x83 });
    r.extend_from_slice(&[0, 1]);
    r.extend_from_slice(&(rdatas.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    for (rtype, data) in rdatas {
        r.extend_from_slice(&[0xc0, 12]); // the name, by pointer to the question
        r.extend_from_slice(&rtype.to_be_bytes());
        r.extend_from_slice(&[0, 1]); // IN
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(&data);
    }
    Some(r)
}
