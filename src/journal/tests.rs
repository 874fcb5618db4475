use super::*;
use crate::clock::now_ms;
use crate::config::JournalSync;
use alloy::primitives::B256;
use std::time::Duration;

fn entry(n: u8, state: JournalState) -> Entry {
    Entry {
        id: i64::from(n),
        key: ReplayKey {
            chain_id: 84532,
            asset: Address::repeat_byte(1),
            from: Address::repeat_byte(2),
            nonce: B256::repeat_byte(n),
        },
        pay_to: Address::repeat_byte(3),
        amount: U256::from(1000),
        network: "eip155:84532".into(),
        version: 2,
        route: "/paid/**".into(),
        resource: "http://gw/paid/x".into(),
        request: "{}".into(),
        valid_before: 2_000_000_000,
        state,
        transaction: None,
        reason: None,
        from_block: None,
        created_at: 1_000 + u64::from(n),
        updated_at: 1_000 + u64::from(n),
        released: false,
    }
}

fn config(dir: &Path, sync: JournalSync) -> JournalConfig {
    JournalConfig {
        enabled: true,
        path: dir.join("journal.db"),
        sync,
        retention: Duration::from_secs(90 * 86_400),
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "x402-journal-{name}-{}-{}",
        std::process::id(),
        now_ms()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn the_life_cycle_is_recorded_and_read_back() {
    let dir = scratch("cycle");
    let j = Journal::open(&config(&dir, JournalSync::Full)).unwrap();
    let e = entry(1, JournalState::Verified);
    j.record(e.clone());
    j.transition(e.id, JournalState::Forwarded, None, None);
    j.transition_state_durable(e.id, &crate::flow::State::Settling, Some(77))
        .await
        .unwrap();
    let r = open_reader(&dir.join("journal.db")).unwrap();
    let by_key = |r: &Connection| {
        find(r, &format!("{:#x}", e.key.from), &e.key.nonce.to_string())
            .unwrap()
            .pop()
            .unwrap()
    };
    let got = by_key(&r);
    assert_eq!(got.state, JournalState::Settling);
    assert_eq!(got.from_block, Some(77));
    j.transition(e.id, JournalState::Settled, Some("0xab".into()), None);
    j.transition(e.id, JournalState::Delivered, None, None);
    j.flush().await.unwrap();
    let got = by_key(&r);
    assert_eq!(got.state, JournalState::Delivered);
    assert_eq!(got.transaction.as_deref(), Some("0xab"));
    assert_eq!(got.request, "{}");
    assert_eq!(got.key, e.key);
    assert_eq!(got.amount, U256::from(1000));
    let found = find(&r, &e.key.from.to_checksum(None), &e.key.nonce.to_string()).unwrap();
    assert_eq!(found.len(), 1, "found with a checksummed address too");
    // Ids grow with time.
    let (a, b) = (j.next_id(), j.next_id());
    assert!(b > a && a > 1 << 40);
}

#[tokio::test]
async fn queries_filter_by_state_route_and_time() {
    let dir = scratch("query");
    let j = Journal::open(&config(&dir, JournalSync::Normal)).unwrap();
    for (n, s) in [
        (1, JournalState::Unknown),
        (2, JournalState::Settled),
        (3, JournalState::Delivered),
    ] {
        j.record(entry(n, s));
    }
    j.flush().await.unwrap();
    let r = open_reader(&dir.join("journal.db")).unwrap();
    let open = query(
        &r,
        &Filter {
            states: vec![JournalState::Unknown, JournalState::Settled],
            ..Filter::default()
        },
    )
    .unwrap();
    assert_eq!(open.len(), 2);
    let later = query(
        &r,
        &Filter {
            since_ms: Some(1_002),
            ..Filter::default()
        },
    )
    .unwrap();
    assert_eq!(later.len(), 2);
    j.prune(u64::MAX);
    j.flush().await.unwrap();
    assert_eq!(
        query(&r, &Filter::default()).unwrap().len(),
        2,
        "delivered rows pruned"
    );
}

#[tokio::test]
async fn a_full_journal_refuses_durable_writes_and_says_so() {
    let dir = scratch("full");
    let j = Journal::open(&config(&dir, JournalSync::Full)).unwrap();
    j.record(entry(1, JournalState::Verified));
    j.flush().await.unwrap();
    assert!(j.is_healthy());
    // The database may not grow any more: every new row fails with SQLITE_FULL.
    let pages: i64 = open_reader(&dir.join("journal.db"))
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    j.limit_pages(pages as u64).await;
    let mut failed = None;
    for n in 2..200u8 {
        let mut e = entry(n, JournalState::Verified);
        e.request = "x".repeat(4000);
        if j.record_durable(e.clone(), false).await.is_err() {
            failed = Some(e);
            break;
        }
    }
    let e = failed.expect("a full journal accepted every write");
    assert!(!j.is_healthy());
    let _ = e.id;
    let mut settling = e.clone();
    settling.state = JournalState::Settling;
    assert!(j.record_durable(settling, false).await.is_err());
    // Room again: the next commit succeeds and the journal is healthy.
    j.limit_pages(1 << 20).await;
    j.flush().await.unwrap();
    assert!(j.is_healthy());
}

#[tokio::test]
async fn a_delivered_or_failed_payment_never_moves_back() {
    let dir = scratch("forward");
    let j = Journal::open(&config(&dir, JournalSync::Normal)).unwrap();
    let delivered = entry(1, JournalState::Delivered);
    let failed = entry(2, JournalState::Failed);
    j.record(delivered.clone());
    j.record(failed.clone());
    // What a process that took over would write after reading the chain.
    j.transition(
        delivered.id,
        JournalState::Settled,
        Some("0xcd".into()),
        None,
    );
    j.transition(failed.id, JournalState::Unknown, None, None);
    j.flush().await.unwrap();
    let r = open_reader(&dir.join("journal.db")).unwrap();
    let state = |e: &Entry| {
        find(&r, &format!("{:#x}", e.key.from), &e.key.nonce.to_string()).unwrap()[0].state
    };
    assert_eq!(state(&delivered), JournalState::Delivered);
    assert_eq!(state(&failed), JournalState::Failed);
}

#[tokio::test]
async fn a_process_taking_over_never_picks_the_running_ones_ids() {
    let dir = scratch("tags");
    let c = config(&dir, JournalSync::Normal);
    let old = Journal::open(&c).unwrap();
    let mut e = entry(1, JournalState::Settling);
    e.id = old.next_id();
    old.record_durable(e, false).await.unwrap();
    // The new process opens the same file while the old one still writes.
    let new = Journal::open(&c).unwrap();
    assert_eq!(new.tag, (old.tag + 1) & 0xFF);
    let (a, b) = (old.next_id(), new.next_id());
    assert_ne!(a, b);
    assert_ne!(
        (a >> ID_TAG_SHIFT) & 0xFF,
        (b >> ID_TAG_SHIFT) & 0xFF,
        "same milliseconds never collide"
    );
    // Both grow with time.
    assert!(old.next_id() > a && new.next_id() > b);
}
