//! The deferred exposure book: how much value is out on credit (released before settlement),
//! per payer and in all, in micro-dollars, against `[payment.deferred]`'s caps.
//!
//! Owns: [`Book`] and the rules of [`Book::reserve`] (may this payment go out on credit?) and
//! [`Book::recheck`] (may it still, now that its answer is ready?). Value counts from the
//! moment a payment is admitted on credit until it is settled, or given back unserved. Value
//! that failed to settle is *unpaid*: it stays counted (and its payer is settled first) until
//! an operator clears it (`journal clear`), so `max_total` bounds the loss for good, not per
//! cycle of failures.
//!
//! Does not own: the queue of owed settlements (`ledger::queue`), or the journal's record of
//! unpaid deliveries (read in by [`Book::set_unpaid`]).

use std::collections::HashMap;

use alloy::primitives::{Address, U256};

use super::ReplayKey;
use crate::config::DeferredConfig;
use crate::flow::Fallback;

/// What a payment asks to put on credit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposure {
    /// The authorization.
    pub key: ReplayKey,
    /// The payer.
    pub payer: Address,
    /// Its value, micro-dollars (rounded up).
    pub micro: u128,
    /// The authorization's `validBefore` (unix seconds).
    pub valid_before: u64,
    /// The route's `settle_first_above` (micro-dollars), if any.
    pub threshold: Option<u128>,
}

/// The book. Not shared by itself: the ledger keeps it under a lock.
#[derive(Debug, Default)]
pub struct Book {
    /// Value reserved by payments in flight or owed, by authorization.
    reserved: HashMap<ReplayKey, (Address, u128)>,
    reserved_total: u128,
    reserved_by: HashMap<Address, u128>,
    /// Value that failed to settle after its answer went out, by payer (from the journal,
    /// and as failures happen).
    unpaid: HashMap<Address, u128>,
    unpaid_total: u128,
    /// Payers whose owed settlement was refused and is not resolved yet (settled first).
    troubled: HashMap<ReplayKey, Address>,
}

impl Book {
    /// Whether `payer` must be settled first: an unpaid delivery, or a settlement in trouble.
    pub fn is_flagged(&self, payer: Address) -> bool {
        self.unpaid.contains_key(&payer) || self.troubled.values().any(|p| *p == payer)
    }

    /// The payers settled first now.
    pub fn flagged(&self) -> std::collections::HashSet<Address> {
        self.unpaid
            .keys()
            .chain(self.troubled.values())
            .copied()
            .collect()
    }

    /// Reserves `e` if it may go out on credit at `now_ms` (`behind`: the queue cannot start
    /// it within half of `max_delay`).
    ///
    /// # Errors
    /// Why it must be settled first; nothing is reserved then.
    pub fn reserve(
        &mut self,
        c: &DeferredConfig,
        e: &Exposure,
        now_ms: u64,
        behind: bool,
    ) -> Result<(), Fallback> {
        if e.threshold.is_some_and(|t| e.micro > t) {
            return Err(Fallback::AboveThreshold);
        }
        self.recheck(c, e, now_ms)?;
        if behind {
            return Err(Fallback::Behind);
        }
        if self.reserved.contains_key(&e.key) {
            return Ok(());
        }
        let mine = self.reserved_by.get(&e.payer).copied().unwrap_or(0)
            + self.unpaid.get(&e.payer).copied().unwrap_or(0);
        if mine.saturating_add(e.micro) > c.max_per_payer {
            return Err(Fallback::PerPayer);
        }
        if self.total().saturating_add(e.micro) > c.max_total {
            return Err(Fallback::Total);
        }
        self.add(e.key.clone(), e.payer, e.micro);
        Ok(())
    }

    /// What must still hold when the answer is ready to go out on credit: the authorization
    /// can be settled in time (within `max_delay`, with time left for retries and a slow
    /// block), and the payer is in good standing. The caps hold by the reservation.
    ///
    /// # Errors
    /// Why it must be settled first now.
    pub fn recheck(&self, c: &DeferredConfig, e: &Exposure, now_ms: u64) -> Result<(), Fallback> {
        if !settles_in_time(c, e.valid_before, now_ms) {
            return Err(Fallback::Expiring);
        }
        if self.is_flagged(e.payer) {
            return Err(Fallback::Unpaid);
        }
        Ok(())
    }

    /// Reserves without checking the caps (recovery: the answer went out already).
    pub fn reserve_owed(&mut self, key: ReplayKey, payer: Address, micro: u128) {
        if !self.reserved.contains_key(&key) {
            self.add(key, payer, micro);
        }
    }

    fn add(&mut self, key: ReplayKey, payer: Address, micro: u128) {
        self.reserved.insert(key, (payer, micro));
        self.reserved_total = self.reserved_total.saturating_add(micro);
        *self.reserved_by.entry(payer).or_default() += micro;
    }

    /// Gives the reservation of `key` back (settled, or never released on credit).
    pub fn release(&mut self, key: &ReplayKey) {
        self.troubled.remove(key);
        let Some((payer, micro)) = self.reserved.remove(key) else {
            return;
        };
        self.reserved_total = self.reserved_total.saturating_sub(micro);
        if let Some(v) = self.reserved_by.get_mut(&payer) {
            *v = v.saturating_sub(micro);
            if *v == 0 {
                self.reserved_by.remove(&payer);
            }
        }
    }

    /// The owed settlement of `key` failed for good: its value becomes unpaid (still counted)
    /// and its payer is settled first until cleared.
    pub fn failed(&mut self, key: &ReplayKey, payer: Address, micro: u128) {
        let micro = self.reserved.get(key).map_or(micro, |(_, m)| *m);
        self.release(key);
        *self.unpaid.entry(payer).or_default() += micro;
        self.unpaid_total = self.unpaid_total.saturating_add(micro);
    }

    /// The owed settlement of `key` was refused while its authorization is still open: its
    /// payer is settled first until it is resolved.
    pub fn trouble(&mut self, key: ReplayKey, payer: Address) {
        self.troubled.insert(key, payer);
    }

    /// Replaces the unpaid deliveries with the journal's (an operator may have cleared some).
    pub fn set_unpaid(&mut self, unpaid: HashMap<Address, u128>) {
        self.unpaid_total = unpaid.values().fold(0u128, |a, v| a.saturating_add(*v));
        self.unpaid = unpaid;
    }

    /// Value on credit now (reserved and unpaid), micro-dollars.
    pub fn total(&self) -> u128 {
        self.reserved_total.saturating_add(self.unpaid_total)
    }

    /// (value on credit, payers holding some).
    pub fn exposure(&self) -> (u128, usize) {
        let mut payers: Vec<&Address> = self.reserved_by.keys().collect();
        payers.extend(
            self.unpaid
                .keys()
                .filter(|p| !self.reserved_by.contains_key(*p)),
        );
        (self.total(), payers.len())
    }

    /// Value reserved by owed settlements (not the unpaid), micro-dollars.
    pub fn reserved(&self) -> u128 {
        self.reserved_total
    }
}

/// Whether an authorization valid before `valid_before` (unix s) can be settled by the queue
/// in time at `now_ms`: within `max_delay`, with time left for retries and a slow block.
pub fn settles_in_time(c: &DeferredConfig, valid_before: u64, now_ms: u64) -> bool {
    let delay = crate::clock::millis(c.max_delay);
    valid_before.saturating_mul(1000) >= now_ms.saturating_add(2 * delay + 30_000)
}

/// `amount` atomic units of a token with `decimals` decimals, in micro-dollars (rounded up).
pub fn micro_dollars(amount: U256, decimals: u8) -> u128 {
    let v = if decimals >= 6 {
        let div = U256::from(10u8).pow(U256::from(decimals - 6));
        amount.div_ceil(div)
    } else {
        amount.saturating_mul(U256::from(10u8).pow(U256::from(6 - decimals)))
    };
    u128::try_from(v).unwrap_or(u128::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::B256;
    use std::time::Duration;

    fn cfg() -> DeferredConfig {
        DeferredConfig {
            max_per_payer: 1000,
            max_total: 2500,
            max_delay: Duration::from_secs(5),
            settle_first_above: None,
            concurrency: 1,
        }
    }

    const FAR: u64 = 10_000_000_000;

    fn ask(payer: u8, nonce: u8, micro: u128) -> Exposure {
        Exposure {
            key: ReplayKey {
                chain_id: 1,
                asset: Address::repeat_byte(9),
                from: Address::repeat_byte(payer),
                nonce: B256::repeat_byte(nonce),
            },
            payer: Address::repeat_byte(payer),
            micro,
            valid_before: FAR,
            threshold: None,
        }
    }

    #[test]
    fn caps_hold_and_come_back_when_reservations_are_released() {
        let (c, mut b) = (cfg(), Book::default());
        assert_eq!(b.reserve(&c, &ask(1, 1, 600), 0, false), Ok(()));
        assert_eq!(
            b.reserve(&c, &ask(1, 2, 500), 0, false),
            Err(Fallback::PerPayer)
        );
        assert_eq!(b.reserve(&c, &ask(1, 3, 400), 0, false), Ok(()));
        assert_eq!(b.reserve(&c, &ask(2, 4, 1000), 0, false), Ok(()));
        assert_eq!(
            b.reserve(&c, &ask(3, 5, 501), 0, false),
            Err(Fallback::Total)
        );
        assert_eq!(b.exposure(), (2000, 2));
        b.release(&ask(1, 1, 0).key);
        assert_eq!(b.exposure(), (1400, 2));
        assert_eq!(b.reserve(&c, &ask(1, 6, 600), 0, false), Ok(()));
        b.release(&ask(1, 3, 0).key);
        b.release(&ask(2, 4, 0).key);
        b.release(&ask(1, 6, 0).key);
        assert_eq!(b.exposure(), (0, 0));
    }

    #[test]
    fn value_that_failed_to_settle_stays_counted_until_cleared() {
        let (c, mut b) = (cfg(), Book::default());
        // Fresh payers, each failing: at most max_total of them ever go out on credit.
        let mut released = 0;
        for n in 0..10u8 {
            let a = ask(10 + n, n, 1000);
            if b.reserve(&c, &a, 0, false).is_ok() {
                released += 1;
                b.failed(&a.key, a.payer, a.micro);
            }
        }
        assert_eq!(released, 2, "max_total 2500 / 1000");
        assert_eq!(b.exposure(), (2000, 2));
        assert_eq!(
            b.reserve(&c, &ask(1, 1, 600), 0, false),
            Err(Fallback::Total)
        );
        // The operator clears the unpaid deliveries (the journal no longer lists them).
        b.set_unpaid(HashMap::new());
        assert_eq!(b.reserve(&c, &ask(1, 1, 600), 0, false), Ok(()));
    }

    #[test]
    fn threshold_expiry_flags_and_backlog_fall_back() {
        let (c, mut b) = (cfg(), Book::default());
        let mut a = ask(1, 1, 101);
        a.threshold = Some(100);
        assert_eq!(b.reserve(&c, &a, 0, false), Err(Fallback::AboveThreshold));
        // Valid for 30 s from now: too short for a 5 s delay plus retries.
        let now = 1_000_000_000;
        let mut a = ask(1, 2, 1);
        a.valid_before = now / 1000 + 30;
        assert_eq!(b.reserve(&c, &a, now, false), Err(Fallback::Expiring));
        a.valid_before = now / 1000 + 60;
        assert_eq!(b.reserve(&c, &a, now, false), Ok(()));
        // ...and 21 s later, when its answer is ready, no longer.
        assert_eq!(b.recheck(&c, &a, now + 21_000), Err(Fallback::Expiring));
        assert_eq!(b.reserve(&c, &ask(1, 3, 1), 0, true), Err(Fallback::Behind));
        b.trouble(ask(1, 9, 1).key, Address::repeat_byte(1));
        assert_eq!(
            b.reserve(&c, &ask(1, 4, 1), 0, false),
            Err(Fallback::Unpaid)
        );
        assert_eq!(b.recheck(&c, &a, now), Err(Fallback::Unpaid));
        b.release(&ask(1, 9, 1).key);
        assert_eq!(b.recheck(&c, &a, now), Ok(()));
    }

    #[test]
    fn micro_dollars_round_up() {
        assert_eq!(micro_dollars(U256::from(1000), 6), 1000);
        assert_eq!(micro_dollars(U256::from(1), 18), 1);
        assert_eq!(micro_dollars(U256::from(10u64.pow(12)), 18), 1);
        assert_eq!(micro_dollars(U256::from(3), 2), 30_000);
    }
}
