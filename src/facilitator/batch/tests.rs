use super::plan::Plan;
use super::*;

use tokio::time::Instant;

/// Flushes recorded as (time since the test started, the items), answering each item × 10.
type Log = Arc<Mutex<Vec<(Duration, Vec<u32>)>>>;

fn recording(start: Instant) -> (Flush<u32, u32>, Log) {
    let log: Log = Arc::default();
    let for_flush = Arc::clone(&log);
    let flush: Flush<u32, u32> = Arc::new(move |items: Vec<u32>| {
        let log = Arc::clone(&for_flush);
        Box::pin(async move {
            log.lock().unwrap().push((start.elapsed(), items.clone()));
            items.into_iter().map(|i| i * 10).collect()
        })
    });
    (flush, log)
}

fn submit_all(
    q: &Arc<Queue<u32, u32>>,
    items: std::ops::Range<u32>,
) -> Vec<tokio::task::JoinHandle<(u32, u32)>> {
    items
        .map(|i| {
            let q = Arc::clone(q);
            tokio::spawn(async move { (i, q.submit(i).await.unwrap()) })
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_batch_flushes_as_soon_as_max_items_wait() {
    let start = crate::clock::instant();
    let (flush, log) = recording(start);
    let window = Duration::from_secs(3600);
    let q = Queue::new(3, window, flush);
    for h in submit_all(&q, 0..7) {
        let (i, answer) = h.await.unwrap();
        assert_eq!(answer, i * 10, "each caller gets its own item's answer");
    }
    let log = log.lock().unwrap();
    let sizes: Vec<(Duration, usize)> = log.iter().map(|(t, b)| (*t, b.len())).collect();
    // Two full batches at once; the seventh item waits for its window.
    assert_eq!(
        sizes,
        [(Duration::ZERO, 3), (Duration::ZERO, 3), (window, 1)],
        "{log:?}"
    );
    let mut all: Vec<u32> = log.iter().flat_map(|(_, b)| b.clone()).collect();
    all.sort_unstable();
    assert_eq!(all, (0..7).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_flushes_when_its_oldest_item_has_waited_the_window() {
    let start = crate::clock::instant();
    let (flush, log) = recording(start);
    let window = Duration::from_millis(200);
    let q = Queue::new(100, window, flush);
    let first = submit_all(&q, 0..1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let second = submit_all(&q, 1..2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // 250 ms: the first batch (both items) went at 200 ms, the window of its oldest.
    let third = submit_all(&q, 2..3);
    for h in first.into_iter().chain(second).chain(third) {
        let (i, answer) = h.await.unwrap();
        assert_eq!(answer, i * 10);
    }
    let log = log.lock().unwrap();
    assert_eq!(
        *log,
        [
            (Duration::from_millis(200), vec![0, 1]),
            (Duration::from_millis(450), vec![2]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_of_one_goes_at_once() {
    let start = crate::clock::instant();
    let (flush, log) = recording(start);
    let q = Queue::new(1, Duration::from_secs(3600), flush);
    for h in submit_all(&q, 0..3) {
        h.await.unwrap();
    }
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 3);
    assert!(
        log.iter().all(|(t, b)| t.is_zero() && b.len() == 1),
        "{log:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_that_ends_without_answers_is_lost_not_hung() {
    let flush: Flush<u32, u32> = Arc::new(|_items: Vec<u32>| Box::pin(async { Vec::new() }));
    let q = Queue::new(2, Duration::from_millis(10), flush);
    let h = submit_all(&q, 0..2);
    for h in h {
        let q = h.await;
        assert!(
            q.is_err(),
            "a caller without an answer must not get one made up"
        );
    }
}

// === plan ===

/// A scripted chain: which items the simulation refuses, which sizes estimate, what fails.
#[derive(Default)]
struct Script {
    refuse: Vec<u32>,
    /// Refused in a batch of more than one, passing alone (starved by another call).
    starved: Vec<u32>,
    /// Largest batch whose gas fits.
    fits: usize,
    /// An item whose presence makes estimation fail.
    breaks_estimate: Option<u32>,
    /// Batches larger than this fail as a whole in simulation.
    whole_above: Option<usize>,
    outage: bool,
    /// Every batch simulated (its items).
    simulated: Mutex<Vec<Vec<u32>>>,
}

impl Planner for Script {
    type Item = u32;
    type Refusal = &'static str;

    async fn simulate(&self, items: &[u32]) -> Simulated<&'static str> {
        self.simulated.lock().unwrap().push(items.to_vec());
        if self.outage {
            return Simulated::Outage("down".into());
        }
        if self.whole_above.is_some_and(|n| items.len() > n) {
            return Simulated::Whole;
        }
        Simulated::Each(
            items
                .iter()
                .map(|i| {
                    if self.refuse.contains(i) || (items.len() > 1 && self.starved.contains(i)) {
                        Err("used")
                    } else {
                        Ok(())
                    }
                })
                .collect(),
        )
    }

    async fn alone(&self, item: &u32) -> Alone<&'static str> {
        if self.refuse.contains(item) {
            Alone::Refused("used")
        } else {
            Alone::Passes
        }
    }

    async fn estimate(&self, items: &[u32]) -> Estimate {
        if self.breaks_estimate.is_some_and(|b| items.contains(&b)) || items.len() > self.fits {
            Estimate::Split
        } else {
            Estimate::Fits(items.len() as u64 * 1000)
        }
    }
}

fn covered(p: &Plan<u32, &'static str>) -> Vec<u32> {
    let mut all: Vec<u32> = p.sends.iter().flat_map(|(g, _)| g.clone()).collect();
    all.extend(&p.singles);
    all.extend(p.refused.iter().map(|(i, _)| *i));
    all.extend(p.outage.iter().map(|(i, _)| *i));
    all.sort_unstable();
    all
}

#[tokio::test]
async fn refused_calls_leave_the_batch_and_the_rest_is_one_send() {
    let s = Script {
        refuse: vec![3, 7],
        fits: 100,
        ..Script::default()
    };
    let p = plan(&s, (0..10).collect()).await;
    assert_eq!(p.refused, [(3, "used"), (7, "used")]);
    assert_eq!(p.sends.len(), 1);
    assert_eq!(p.sends[0].0, [0, 1, 2, 4, 5, 6, 8, 9]);
    assert_eq!(p.sends[0].1, 8000);
    assert!(p.singles.is_empty() && p.outage.is_empty());
    assert_eq!(
        s.simulated.lock().unwrap().len(),
        1,
        "one eth_call for the batch"
    );
}

#[tokio::test]
async fn a_batch_too_big_for_a_block_is_split_in_halves() {
    let s = Script {
        fits: 3,
        ..Script::default()
    };
    let p = plan(&s, (0..10).collect()).await;
    let groups: Vec<Vec<u32>> = p.sends.iter().map(|(g, _)| g.clone()).collect();
    assert_eq!(
        groups,
        [vec![0, 1], vec![2, 3, 4], vec![5, 6], vec![7, 8, 9]]
    );
    assert_eq!(covered(&p), (0..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_payment_that_breaks_estimation_ends_alone_on_the_single_path() {
    let s = Script {
        fits: 100,
        breaks_estimate: Some(6),
        ..Script::default()
    };
    let p = plan(&s, (0..10).collect()).await;
    // Halving isolates it: [5..10] → [5, 6] → [5], [6].
    assert_eq!(p.singles, [5, 6]);
    let groups: Vec<Vec<u32>> = p.sends.iter().map(|(g, _)| g.clone()).collect();
    assert_eq!(groups, [vec![0, 1, 2, 3, 4], vec![7, 8, 9]]);
    assert_eq!(covered(&p), (0..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_whole_failure_splits_and_an_outage_decides_nothing() {
    let s = Script {
        fits: 100,
        whole_above: Some(4),
        ..Script::default()
    };
    let p = plan(&s, (0..10).collect()).await;
    assert!(p.sends.iter().all(|(g, _)| g.len() <= 4), "{:?}", p.sends);
    assert_eq!(covered(&p), (0..10).collect::<Vec<_>>());

    let s = Script {
        fits: 100,
        outage: true,
        ..Script::default()
    };
    let p = plan(&s, (0..10).collect()).await;
    assert!(p.sends.is_empty() && p.singles.is_empty() && p.refused.is_empty());
    assert_eq!(p.outage.len(), 10);
}

#[tokio::test]
async fn one_payment_left_after_simulation_takes_the_single_path() {
    let s = Script {
        refuse: vec![0, 1],
        fits: 100,
        ..Script::default()
    };
    let p = plan(&s, (0..3).collect()).await;
    assert!(p.sends.is_empty());
    assert_eq!(p.singles, [2]);
    // A batch of one is never simulated as a batch.
    let s = Script::default();
    let p = plan(&s, vec![9]).await;
    assert_eq!(p.singles, [9]);
    assert!(s.simulated.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_payment_another_one_starves_is_settled_alone_never_refused() {
    // 3 and 6 fail in any batch because another call burns the gas; alone they pass. 5 is
    // refused on its own.
    let s = Script {
        refuse: vec![5],
        starved: vec![3, 6],
        fits: 100,
        ..Script::default()
    };
    let p = plan(&s, (0..8).collect()).await;
    let mut singles = p.singles.clone();
    singles.sort_unstable();
    assert_eq!(singles, [3, 6], "settled alone, not refused");
    assert_eq!(p.refused.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [5]);
    let batched: Vec<u32> = p.sends.iter().flat_map(|(b, _)| b.clone()).collect();
    assert_eq!(batched.len(), 5);
    assert!(!batched.contains(&3) && !batched.contains(&6) && !batched.contains(&5));
}
