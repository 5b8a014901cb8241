//! A nameserver on loopback for the DNS tests: A, AAAA and SRV records the test can change while
//! it runs, a TTL of its choosing, a count of the queries answered, and a switch that makes it go
//! silent (queries are dropped, as when a nameserver dies).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::SRV;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

/// The records served, by lowercase name with its trailing dot (`api.test.`).
#[derive(Default)]
pub struct Zone {
    pub ttl: u32,
    pub ips: HashMap<String, Vec<IpAddr>>,
    /// (priority, weight, port, target)
    pub srv: HashMap<String, Vec<(u16, u16, u16, String)>>,
}

pub struct TestDns {
    pub addr: SocketAddr,
    pub zone: Arc<Mutex<Zone>>,
    silent: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestDns {
    pub async fn start(ttl: u32) -> Self {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(Zone {
            ttl,
            ..Zone::default()
        }));
        let (silent, queries) = (Arc::<AtomicBool>::default(), Arc::<AtomicUsize>::default());
        let (z, s, q) = (zone.clone(), silent.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                if s.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(request) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let response = answer(&request, &z.lock().unwrap());
                if let Ok(bytes) = response.to_vec() {
                    let _ = sock.send_to(&bytes, from).await;
                }
            }
        });
        Self {
            addr,
            zone,
            silent,
            queries,
            task,
        }
    }

    /// Serves `ips` for `name` (without the trailing dot).
    pub fn set_ips(&self, name: &str, ips: &[IpAddr]) {
        let mut z = self.zone.lock().unwrap();
        z.ips.insert(format!("{name}."), ips.to_vec());
    }

    /// Serves SRV records `(priority, weight, port, target)` for `name`.
    pub fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)]) {
        let mut z = self.zone.lock().unwrap();
        let records = records
            .iter()
            .map(|(p, w, port, t)| (*p, *w, *port, format!("{t}.")))
            .collect();
        z.srv.insert(format!("{name}."), records);
    }

    /// Stops answering (true) or answers again (false).
    pub fn set_silent(&self, silent: bool) {
        self.silent.store(silent, Ordering::SeqCst);
    }

    /// Queries answered so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

fn answer(request: &Message, zone: &Zone) -> Message {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_authoritative(true)
        .set_recursion_desired(request.recursion_desired());
    let Some(query) = request.queries().first() else {
        response.set_response_code(ResponseCode::FormErr);
        return response;
    };
    response.add_query(query.clone());
    let mut key = query.name().to_ascii().to_ascii_lowercase();
    if !key.ends_with('.') {
        key.push('.');
    }
    match query.query_type() {
        t @ (RecordType::A | RecordType::AAAA) => {
            for ip in zone.ips.get(&key).into_iter().flatten() {
                if ip.is_ipv4() == (t == RecordType::A) {
                    let record =
                        Record::from_rdata(query.name().clone(), zone.ttl, RData::from(*ip));
                    response.add_answer(record);
                }
            }
        }
        RecordType::SRV => {
            for (priority, weight, port, target) in zone.srv.get(&key).into_iter().flatten() {
                let srv = SRV::new(*priority, *weight, *port, Name::from_ascii(target).unwrap());
                let record = Record::from_rdata(query.name().clone(), zone.ttl, RData::SRV(srv));
                response.add_answer(record);
            }
        }
        _ => {}
    }
    if !zone.ips.contains_key(&key) && !zone.srv.contains_key(&key) {
        response.set_response_code(ResponseCode::NXDomain);
    }
    response
}
