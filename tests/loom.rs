//! Model checks of the crate's lock-free state with loom: every interleaving of two or three
//! threads, for the health cell (ejection and the probe slot), the retry budget's window and its
//! floor, and the round-robin cursor. The state files are compiled here against loom's atomics: each imports
//! its atomics from `crate::sync`, which in this test crate is loom's.

/// What `crate::sync` is inside the state files compiled here.
mod sync {
    pub(crate) use loom::sync::atomic;
}

#[allow(dead_code)]
#[path = "../src/select/cursor.rs"]
mod cursor;
#[allow(dead_code)]
#[path = "../src/retry/floor.rs"]
mod floor;
#[allow(dead_code)]
#[path = "../src/cell/gate.rs"]
mod gate;
#[allow(dead_code)]
#[path = "../src/retry/window.rs"]
mod window;

use loom::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

use gate::{Admit, HealthCell, Tally, Thresholds};

/// Every interleaving, with a preemption bound that keeps three-thread models to seconds.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(2);
    b.check(f);
}

/// The ejected-peers count: it must never be seen below zero.
#[derive(Default)]
struct Gauge(AtomicI64);

impl Tally for Gauge {
    fn add(&self, delta: i64) {
        let after = self.0.fetch_add(delta, Ordering::Relaxed) + delta;
        assert!(after >= 0, "the ejected-peers count went negative: {after}");
    }
}

const RULES: Thresholds = Thresholds {
    failures: 1,
    connect_failures: 1,
    base_ms: 10,
    max_ms: 100,
};

#[test]
fn ejection_and_readmission_keep_the_count_of_ejected_peers_non_negative() {
    model(|| {
        let cell = Arc::new(HealthCell::new());
        let gauge = Arc::new(Gauge::default());
        // One request fails and ejects the peer while another, sent before, succeeds.
        let fail = {
            let (cell, gauge) = (cell.clone(), gauge.clone());
            thread::spawn(move || {
                cell.record_failure(1, true, false, &RULES, &*gauge, &|| true);
            })
        };
        let ok = {
            let (cell, gauge) = (cell.clone(), gauge.clone());
            thread::spawn(move || {
                cell.record_success(|| 2, true, &*gauge);
            })
        };
        fail.join().unwrap();
        ok.join().unwrap();
        // At rest the count is exactly whether the peer is ejected.
        let ejected = i64::from(cell.ejected_until() != 0);
        assert_eq!(gauge.0.load(Ordering::Relaxed), ejected);
    });
}

#[test]
fn a_departure_racing_a_readmission_counts_the_ejection_out_once() {
    model(|| {
        let cell = Arc::new(HealthCell::new());
        let gauge = Arc::new(Gauge::default());
        cell.record_failure(1, true, false, &RULES, &*gauge, &|| true)
            .unwrap();
        // The peer leaves its set (its ejection is ended) while its probe re-admits it.
        let leave = {
            let (cell, gauge) = (cell.clone(), gauge.clone());
            thread::spawn(move || {
                cell.clear_ejection(&*gauge);
            })
        };
        let probe = {
            let (cell, gauge) = (cell.clone(), gauge.clone());
            thread::spawn(move || {
                cell.record_success(|| 20, true, &*gauge);
            })
        };
        leave.join().unwrap();
        probe.join().unwrap();
        assert_eq!(cell.ejected_until(), 0);
        assert_eq!(gauge.0.load(Ordering::Relaxed), 0, "counted out once");
    });
}

#[test]
fn a_departure_racing_a_fresh_ejection_leaves_no_count_when_cleared_after() {
    model(|| {
        let cell = Arc::new(HealthCell::new());
        let gauge = Arc::new(Gauge::default());
        // A failure ejects the peer as it leaves; the failing side clears again once it sees
        // the departure (as `PeerHealth::record_failure_as` does).
        let fail = {
            let (cell, gauge) = (cell.clone(), gauge.clone());
            thread::spawn(move || {
                cell.record_failure(1, true, false, &RULES, &*gauge, &|| true);
                cell.clear_ejection(&*gauge);
            })
        };
        let leave = {
            let (cell, gauge) = (cell.clone(), gauge.clone());
            thread::spawn(move || {
                cell.clear_ejection(&*gauge);
            })
        };
        fail.join().unwrap();
        leave.join().unwrap();
        assert_eq!(gauge.0.load(Ordering::Relaxed), 0);
    });
}

#[test]
fn at_most_one_probe_at_a_time() {
    model(|| {
        let cell = Arc::new(HealthCell::new());
        let gauge = Gauge::default();
        cell.record_failure(1, true, false, &RULES, &gauge, &|| true)
            .unwrap();
        // The ejection (10 ms from 1) is over at 11. One request takes the probe slot; another
        // races for it while a straggler's failure ejects the peer again.
        let probes = Arc::new(AtomicUsize::new(0));
        if cell.claim(|| 20, 1000) == Admit::Probe {
            probes.fetch_add(1, Ordering::Relaxed);
        }
        let racer = {
            let (cell, probes) = (cell.clone(), probes.clone());
            thread::spawn(move || {
                if cell.claim(|| 20, 1000) == Admit::Probe {
                    probes.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let again = {
            let cell = cell.clone();
            thread::spawn(move || {
                cell.record_failure(20, true, false, &RULES, &Gauge::default(), &|| true);
            })
        };
        racer.join().unwrap();
        again.join().unwrap();
        assert!(probes.load(Ordering::Relaxed) <= 1, "two probes at once");
    });
}

#[test]
fn racing_withdrawals_never_overdraw_the_budget() {
    model(|| {
        // A floor of 2 retries in the window and no requests: exactly 2 may be taken.
        let budget = Arc::new(window::Window::new(0.0, 2.0, 1));
        let granted = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (budget, granted) = (budget.clone(), granted.clone());
                thread::spawn(move || {
                    if budget.withdraw(1) {
                        granted.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(granted.load(Ordering::Relaxed), 2);
        assert_eq!(budget.remaining(1), 0);
    });
}

#[test]
fn racing_takes_never_empty_the_floor_beyond_its_burst() {
    model(|| {
        // A burst of 2 and three takes at the same instant: exactly 2 succeed.
        let floor = Arc::new(floor::Floor::new(1, 2));
        let granted = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (floor, granted) = (floor.clone(), granted.clone());
                thread::spawn(move || {
                    if floor.take(1_000) {
                        granted.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(granted.load(Ordering::Relaxed), 2);
        assert_eq!(floor.available(1_000), 0);
    });
}

#[test]
fn a_refund_races_a_withdrawal_without_losing_either() {
    model(|| {
        let budget = Arc::new(window::Window::new(0.0, 1.0, 1));
        assert!(budget.withdraw(1));
        let refund = {
            let budget = budget.clone();
            thread::spawn(move || budget.refund(1))
        };
        let take = {
            let budget = budget.clone();
            thread::spawn(move || budget.withdraw(1))
        };
        refund.join().unwrap();
        let took = take.join().unwrap();
        // Whichever came first, one retry is out at the end if the withdrawal got it.
        assert_eq!(budget.remaining(1), u64::from(!took));
    });
}

#[test]
fn racing_draws_never_share_a_turn() {
    model(|| {
        let cursor = Arc::new(cursor::Cursor::new());
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let cursor = cursor.clone();
                thread::spawn(move || cursor.next() % 3)
            })
            .collect();
        let mut turns: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        turns.sort_unstable();
        assert_eq!(turns, [0, 1, 2], "each of three peers drawn once");
    });
}
