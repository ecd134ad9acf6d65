//! Property: after any history (payments in several currencies, approvals and
//! declines, partial and full captures, voids, expiries, refunds, disputes won and
//! lost, settlements), every journal entry balances and the trial balance is zero in
//! every currency, however the events are cut into batches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use paystream_domain::Currency;
use paystream_projections::ledger::{self, Ledger};
use paystream_projections::sim::{SimOptions, Simulator};
use paystream_projections::{Decoded, DomainRecord, ReadModel};
use proptest::prelude::*;

fn db() -> &'static sled::Db {
    static DB: OnceLock<sled::Db> = OnceLock::new();
    DB.get_or_init(|| sled::Config::new().temporary(true).open().unwrap())
}

fn history(seed: u64, payments: usize, currencies: Vec<Currency>) -> Vec<Decoded> {
    let options =
        SimOptions { seed, merchants: 4, currencies, refund_percent: 40, dispute_percent: 35, ..SimOptions::default() };
    let (mut sim, _) = Simulator::new(options).unwrap();
    let mut out = Vec::new();
    for _ in 0..payments {
        let flow = sim.next_payment().unwrap();
        for event in flow.events {
            let position = out.len() as u64 + 1;
            out.push(Decoded { position, record: DomainRecord::Payment { payment_id: flow.payment_id, event } });
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn journal_entries_balance_and_the_trial_balance_is_zero(
        seed in any::<u64>(),
        payments in 1usize..40,
        currencies in proptest::sample::subsequence(vec![Currency::USD, Currency::EUR, Currency::JPY, Currency::KWD, Currency::CNY], 1..=5),
        batch in 1usize..64,
    ) {
        let events = history(seed, payments, currencies);
        let tree_name = format!("case-{seed}-{payments}-{batch}");
        let tree = db().open_tree(&tree_name).unwrap();
        tree.clear().unwrap();
        for chunk in events.chunks(batch) {
            let mut sled_batch = sled::Batch::default();
            Ledger.apply(&tree, chunk, &mut sled_batch).unwrap();
            tree.apply_batch(sled_batch).unwrap();
        }
        // Every posting event has exactly one entry, and each entry balances.
        let journal = ledger::journal(&tree, 0, ledger::MAX_JOURNAL_PAGE).unwrap();
        let postings = events
            .iter()
            .filter(|d| match &d.record {
                DomainRecord::Payment { payment_id, event } => ledger::postings(d.position, *payment_id, event).is_some(),
                _ => false,
            })
            .count();
        prop_assert_eq!(journal.data.len(), postings);
        for entry in &journal.data {
            prop_assert!(entry.is_balanced(), "unbalanced {:?}", entry);
            let debits: i64 = entry.lines.iter().map(|l| l.debit_minor).sum();
            let credits: i64 = entry.lines.iter().map(|l| l.credit_minor).sum();
            prop_assert_eq!(debits, credits);
        }
        let trial = ledger::trial_balance(&tree).unwrap();
        prop_assert!(trial.balanced);
        for currency in &trial.currencies {
            prop_assert_eq!(currency.difference_minor, 0);
            prop_assert_eq!(currency.debit_minor, currency.credit_minor);
            // Nothing is ever owed back by the acquirer beyond what was captured.
            let receivable = currency.accounts.iter().find(|a| a.account == ledger::Account::AcquirerReceivable);
            prop_assert!(receivable.map_or(0, |a| a.balance_minor) >= 0);
        }
        db().drop_tree(&tree_name).unwrap();
    }
}
