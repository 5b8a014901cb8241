//! Selection and the success path do not allocate: counted by a global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pingora_failover::{
    Attempt, AttemptRecord, FailureKind, OrderedList, OutlierDetection, Peer, PeerSelector,
    RetryBudget, RoundRobin,
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

#[tokio::test]
async fn selection_and_the_success_path_allocate_nothing() {
    let peers: Vec<_> = (0..16)
        .map(|i| Peer::new(&format!("127.0.0.1:{}", 30_000 + i)).unwrap())
        .collect();
    let rules = OutlierDetection::new();
    for p in peers.iter().step_by(2) {
        p.health()
            .record_failure(FailureKind::ConnectRefused, &rules);
    }
    let rr = RoundRobin::new(peers.clone()).unwrap();
    let ordered = OrderedList::new(peers.clone()).unwrap();
    let budget = RetryBudget::default();
    let tried = [AttemptRecord::new(peers[1].clone())];
    let warm = rr.select(&Attempt::new(&[], None));

    let n = allocations_in(|| {
        for _ in 0..1000 {
            let first = Attempt::new(&[], None);
            let retry = Attempt::new(&tried, None);
            std::hint::black_box(rr.select(&first));
            std::hint::black_box(rr.select(&retry));
            std::hint::black_box(ordered.select(&first));
            std::hint::black_box(ordered.select(&retry));
            budget.deposit();
            std::hint::black_box(budget.withdraw());
            std::hint::black_box(peers[1].health().record_success());
            std::hint::black_box(peers[3].health().record_failure(FailureKind::Io, &rules));
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
