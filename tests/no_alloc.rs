//! Selection, the success path and latency learning do not allocate: counted by a global
//! allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use pingora_failover::{
    Attempt, AttemptRecord, FailureKind, HashKey, HashRing, LeastRequest, OrderedList,
    OutlierDetection, PeakEwma, Peer, PeerSelector, PriorityTiers, RetryBudget, RoundRobin,
    SlowStart,
};

/// Counts the allocations made by the current thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

/// A first attempt and a retry through each selector.
fn select_each(
    selectors: &[&dyn PeerSelector],
    tried: &[AttemptRecord],
    request: Option<&pingora_http::RequestHeader>,
) {
    for s in selectors {
        std::hint::black_box(s.select(&Attempt::new(&[], request)));
        std::hint::black_box(s.select(&Attempt::new(tried, request)));
    }
}

#[tokio::test]
async fn selection_and_the_success_path_allocate_nothing() {
    let peers: Vec<_> = (0..16)
        .map(|i| Peer::new(&format!("127.0.0.1:{}", 30_000 + i)).unwrap())
        .collect();
    let rules = OutlierDetection::new();
    for p in peers.iter().step_by(2) {
        rules.record_failure(p, FailureKind::ConnectRefused);
    }
    let rr = RoundRobin::new(peers.clone()).unwrap();
    let ordered = OrderedList::new(peers.clone()).unwrap();
    let hash = HashRing::new(peers.clone(), HashKey::header("x-user").unwrap()).unwrap();
    let least = LeastRequest::new(peers.clone()).unwrap();
    let slow = SlowStart::new(Duration::from_secs(30)).unwrap();
    let ewma = PeakEwma::new(peers.clone()).unwrap().with_slow_start(slow);
    let tiers = PriorityTiers::new(vec![
        Box::new(
            RoundRobin::new(peers[..8].to_vec())
                .unwrap()
                .with_slow_start(slow),
        ),
        Box::new(
            LeastRequest::new(peers[8..].to_vec())
                .unwrap()
                .with_slow_start(slow),
        ),
    ])
    .unwrap();
    // Some peers have answered, one is ramping up after its re-admission.
    for (i, p) in peers.iter().enumerate().take(10) {
        p.health()
            .record_latency(Duration::from_micros(500 * i as u64 + 100));
    }
    rules.record_success(&peers[2]);
    let mut req = pingora_http::RequestHeader::build("GET", b"/items", None).unwrap();
    req.insert_header("x-user", "alice").unwrap();
    // The ring is built on the first pick.
    std::hint::black_box(hash.select(&Attempt::new(&[], Some(&req))));
    let budget = RetryBudget::default();
    let tried = [AttemptRecord::new(peers[1].clone())];
    let warm = rr.select(&Attempt::new(&[], None));

    let n = allocations_in(|| {
        for _ in 0..1000 {
            select_each(
                &[&rr, &ordered, &hash, &least, &ewma, &tiers],
                &tried,
                Some(&req),
            );
            budget.deposit();
            std::hint::black_box(budget.withdraw());
            std::hint::black_box(rules.record_success(&peers[1]));
            peers[1].health().record_latency(Duration::from_micros(700));
            std::hint::black_box(rules.record_failure(&peers[3], FailureKind::Io));
        }
    });
    assert!(warm.is_some());
    // The counter counts: one box is one allocation.
    assert_eq!(
        allocations_in(|| drop(std::hint::black_box(Box::new(1u64)))),
        1
    );
    assert_eq!(n, 0, "allocations on the selection and success paths");
}

#[tokio::test]
async fn selection_over_a_set_that_changed_allocates_nothing_once_it_settled() {
    let peers: Vec<_> = (0..16)
        .map(|i| Peer::new(&format!("127.0.0.1:{}", 31_000 + i)).unwrap())
        .collect();
    let set = pingora_failover::PeerSet::new(peers[..8].to_vec()).unwrap();
    let rr = RoundRobin::from_set(set.clone());
    let ordered = OrderedList::from_set(set.clone());
    // A whole new list, with a new weight for one that stays.
    let mut next = peers[4..].to_vec();
    next[0] = Peer::builder(peers[4].name())
        .with_weight(3)
        .build()
        .unwrap();
    set.replace(next).unwrap();
    // The round-robin makes its schedule for the new set on its first pick after the update.
    std::hint::black_box(rr.select(&Attempt::new(&[], None)));

    let tried = [AttemptRecord::new(set.snapshot()[0].clone())];
    let n = allocations_in(|| {
        for _ in 0..1000 {
            select_each(&[&rr, &ordered], &tried, None);
            std::hint::black_box(set.snapshot().len());
        }
    });
    assert_eq!(n, 0, "allocations selecting over a set after an update");
}
