//! The ledger: a double-entry journal derived from payment events, per currency.
//!
//! # Accounts
//!
//! | account | kind | normal side | holds |
//! |---|---|---|---|
//! | `acquirer_receivable` | asset | debit | captured funds the acquirer has not settled yet |
//! | `settlement_cash` | asset | debit | funds the acquirer settled to the platform, not yet paid out |
//! | `merchant_payable` | liability | credit | what the platform owes merchants |
//! | `dispute_reserve` | liability | credit | merchant funds held while a dispute is open |
//! | `refunds` | liability | credit | refunds paid to cardholders through the acquirer, owed to it until it nets them |
//! | `chargebacks` | liability | credit | lost disputes, owed to the acquirer until it nets them |
//! | `platform_fee_revenue` | revenue | credit | the platform's fees |
//!
//! # Posting rules
//!
//! Each event below posts one journal entry, keyed by its log position, in the
//! payment's currency (amounts in minor units; `A` is the event's `amount`):
//!
//! | event | debit | credit |
//! |---|---|---|
//! | `PaymentCaptured` (A, fee F) | `acquirer_receivable` A | `merchant_payable` A − F, `platform_fee_revenue` F |
//! | `PaymentRefunded` | `merchant_payable` A | `refunds` A |
//! | `PaymentDisputeOpened` | `merchant_payable` A | `dispute_reserve` A |
//! | `PaymentDisputeWon` | `dispute_reserve` A | `merchant_payable` A |
//! | `PaymentDisputeLost` | `dispute_reserve` A | `chargebacks` A |
//! | `PaymentSettled` (A, fees) | `settlement_cash` A | `acquirer_receivable` A |
//!
//! When a fixed fee exceeds a small capture (F > A), the capture debits
//! `merchant_payable` F − A instead of crediting it. Lines of zero amount are left
//! out (a capture without fee has two lines). Authorizations, declines, reviews, voids and expiries move no money and post
//! nothing; fees are recognised at capture, so the `fees` of `PaymentSettled` post
//! nothing. A future payout will post `merchant_payable` / `settlement_cash`.
//!
//! Every entry balances (sum of debits = sum of credits); the projection checks
//! each entry and refuses to store one that does not, so the trial balance is zero
//! in every currency.
//!
//! Tree layout (`projection/ledger/v<N>`):
//!
//! ```text
//! j<position / 64, u64 BE>     the journal entries of those 64 positions (binary, `crate::codec`)
//! b<currency><account name>     balance: debit, credit (i64 BE each)
//! ```

use std::collections::BTreeMap;
use std::io::Write;

use paystream_domain::id::PaymentId;
use paystream_domain::payment::PaymentEvent;
use paystream_domain::time::Timestamp;
use paystream_domain::{Currency, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::codec::{Reader, Writer};
use crate::csv::CsvWriter;
use crate::decode::{Decoded, DomainRecord};
use crate::error::ProjectionError;
use crate::keys;
use crate::model::{heap_block, string_heap, ProjectionName, ReadModel, Record, Stage, WorkingSet};

const NAME: ProjectionName = ProjectionName::Ledger;

/// Most journal entries one journal query returns.
pub const MAX_JOURNAL_PAGE: usize = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Account {
    AcquirerReceivable,
    SettlementCash,
    MerchantPayable,
    DisputeReserve,
    Refunds,
    Chargebacks,
    PlatformFeeRevenue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum AccountKind {
    Asset,
    Liability,
    Revenue,
}

impl Account {
    pub const ALL: [Account; 7] = [
        Account::AcquirerReceivable,
        Account::SettlementCash,
        Account::MerchantPayable,
        Account::DisputeReserve,
        Account::Refunds,
        Account::Chargebacks,
        Account::PlatformFeeRevenue,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Account::AcquirerReceivable => "acquirer_receivable",
            Account::SettlementCash => "settlement_cash",
            Account::MerchantPayable => "merchant_payable",
            Account::DisputeReserve => "dispute_reserve",
            Account::Refunds => "refunds",
            Account::Chargebacks => "chargebacks",
            Account::PlatformFeeRevenue => "platform_fee_revenue",
        }
    }

    pub const fn kind(self) -> AccountKind {
        match self {
            Account::AcquirerReceivable | Account::SettlementCash => AccountKind::Asset,
            Account::MerchantPayable | Account::DisputeReserve | Account::Refunds | Account::Chargebacks => {
                AccountKind::Liability
            }
            Account::PlatformFeeRevenue => AccountKind::Revenue,
        }
    }

    /// Position in [`Account::ALL`] (the stored form in journal chunks).
    const fn index(self) -> u8 {
        match self {
            Account::AcquirerReceivable => 0,
            Account::SettlementCash => 1,
            Account::MerchantPayable => 2,
            Account::DisputeReserve => 3,
            Account::Refunds => 4,
            Account::Chargebacks => 5,
            Account::PlatformFeeRevenue => 6,
        }
    }

    fn from_name(name: &[u8]) -> Option<Account> {
        Account::ALL.into_iter().find(|a| a.as_str().as_bytes() == name)
    }
}

/// One line of a journal entry: a debit or a credit (the other is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JournalLine {
    pub account: Account,
    pub debit_minor: i64,
    pub credit_minor: i64,
}

/// What one event posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JournalEntry {
    /// Log position of the event that posted it (the entry's id).
    pub position: u64,
    pub payment_id: PaymentId,
    pub event_type: String,
    pub at: Timestamp,
    pub currency: Currency,
    pub lines: Vec<JournalLine>,
}

/// Journal entries of [`CHUNK_POSITIONS`] consecutive positions, stored as one value:
/// one sled key per chunk instead of one per entry. Chunks depend on positions only, so
/// a rebuild produces the same chunks whatever the batch sizes were.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct JournalChunk(Vec<JournalEntry>);

/// Format byte of a stored chunk (the first byte of its value).
const CHUNK_FORMAT: u8 = 1;

/// Stored in the compact binary form of [`crate::codec`]: per entry its position,
/// payment, event type, instant, currency and lines (account index, debit, credit).
impl Record for JournalChunk {
    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        if r.u8()? != CHUNK_FORMAT {
            return None;
        }
        let count = usize::try_from(r.u64()?).ok()?;
        let mut entries = Vec::with_capacity(count.min(CHUNK_POSITIONS as usize));
        for _ in 0..count {
            let position = r.u64()?;
            let payment_id = PaymentId::from_uuid(r.uuid()?);
            let event_type = r.string()?;
            let at = r.timestamp()?;
            let currency = r.currency()?;
            let n = r.u8()?;
            let mut lines = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let account = *Account::ALL.get(usize::from(r.u8()?))?;
                lines.push(JournalLine { account, debit_minor: r.i64()?, credit_minor: r.i64()? });
            }
            entries.push(JournalEntry { position, payment_id, event_type, at, currency, lines });
        }
        r.is_empty().then_some(JournalChunk(entries))
    }

    fn heap_bytes(&self) -> usize {
        heap_block(self.0.capacity() * std::mem::size_of::<JournalEntry>())
            + self
                .0
                .iter()
                .map(|e| {
                    string_heap(&e.event_type) + heap_block(e.lines.capacity() * std::mem::size_of::<JournalLine>())
                })
                .sum::<usize>()
    }

    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 * self.0.len() + 8);
        w.u8(CHUNK_FORMAT);
        w.u64(self.0.len() as u64);
        for e in &self.0 {
            w.u64(e.position);
            w.uuid(e.payment_id.as_uuid());
            w.str(&e.event_type);
            w.timestamp(e.at);
            w.currency(e.currency);
            // An entry has at most three lines (the posting rules).
            w.u8(u8::try_from(e.lines.len()).unwrap_or(u8::MAX));
            for line in e.lines.iter().take(usize::from(u8::MAX)) {
                w.u8(line.account.index());
                w.i64(line.debit_minor);
                w.i64(line.credit_minor);
            }
        }
        w.out
    }
}

const CHUNK_POSITIONS: u64 = 64;

fn chunk_key(position: u64) -> Vec<u8> {
    keys::key(&[b"j", &(position / CHUNK_POSITIONS).to_be_bytes()])
}

impl JournalEntry {
    /// Sum of debits equals sum of credits, and no line is negative.
    pub fn is_balanced(&self) -> bool {
        let debits: i128 = self.lines.iter().map(|l| i128::from(l.debit_minor)).sum();
        let credits: i128 = self.lines.iter().map(|l| i128::from(l.credit_minor)).sum();
        debits == credits && self.lines.iter().all(|l| l.debit_minor >= 0 && l.credit_minor >= 0)
    }
}

fn debit(account: Account, amount: i64) -> JournalLine {
    JournalLine { account, debit_minor: amount, credit_minor: 0 }
}

fn credit(account: Account, amount: i64) -> JournalLine {
    JournalLine { account, debit_minor: 0, credit_minor: amount }
}

/// The merchant's part of a capture: a credit, or a debit when a fixed fee exceeds a
/// small capture (the merchant then owes the difference).
fn merchant_share(net: i64) -> JournalLine {
    if net >= 0 {
        credit(Account::MerchantPayable, net)
    } else {
        debit(Account::MerchantPayable, net.saturating_neg())
    }
}

/// The journal entry an event posts (module docs), or `None` if it posts nothing.
pub fn postings(position: u64, payment_id: PaymentId, event: &PaymentEvent) -> Option<JournalEntry> {
    use Account as A;
    use PaymentEvent as E;
    let (at, currency, lines) = match event {
        E::PaymentCaptured { amount, fee, captured_at, .. } => (
            *captured_at,
            amount.currency,
            vec![
                debit(A::AcquirerReceivable, amount.amount_minor),
                merchant_share(amount.amount_minor.saturating_sub(fee.amount_minor)),
                credit(A::PlatformFeeRevenue, fee.amount_minor),
            ],
        ),
        E::PaymentRefunded { amount, refunded_at, .. } => (
            *refunded_at,
            amount.currency,
            vec![debit(A::MerchantPayable, amount.amount_minor), credit(A::Refunds, amount.amount_minor)],
        ),
        E::PaymentDisputeOpened { amount, opened_at, .. } => (
            *opened_at,
            amount.currency,
            vec![debit(A::MerchantPayable, amount.amount_minor), credit(A::DisputeReserve, amount.amount_minor)],
        ),
        E::PaymentDisputeWon { amount, resolved_at, .. } => (
            *resolved_at,
            amount.currency,
            vec![debit(A::DisputeReserve, amount.amount_minor), credit(A::MerchantPayable, amount.amount_minor)],
        ),
        E::PaymentDisputeLost { amount, resolved_at, .. } => (
            *resolved_at,
            amount.currency,
            vec![debit(A::DisputeReserve, amount.amount_minor), credit(A::Chargebacks, amount.amount_minor)],
        ),
        E::PaymentSettled { amount, settled_at, .. } => (
            *settled_at,
            amount.currency,
            vec![debit(A::SettlementCash, amount.amount_minor), credit(A::AcquirerReceivable, amount.amount_minor)],
        ),
        _ => return None,
    };
    let lines: Vec<JournalLine> = lines.into_iter().filter(|l| l.debit_minor != 0 || l.credit_minor != 0).collect();
    if lines.is_empty() {
        return None;
    }
    Some(JournalEntry { position, payment_id, event_type: event.event_type().to_string(), at, currency, lines })
}

/// Debit and credit totals of one account in one currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    debit: i64,
    credit: i64,
}

impl Record for Totals {
    fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 16 {
            return None;
        }
        Some(Totals {
            debit: i64::from_be_bytes(bytes[..8].try_into().ok()?),
            credit: i64::from_be_bytes(bytes[8..].try_into().ok()?),
        })
    }
    fn encode(&self) -> Vec<u8> {
        keys::key(&[&self.debit.to_be_bytes(), &self.credit.to_be_bytes()])
    }
}

fn balance_key(currency: Currency, account: Account) -> Vec<u8> {
    keys::key(&[b"b", &keys::currency_key(currency), account.as_str().as_bytes()])
}

/// The ledger read model.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ledger;

impl ReadModel for Ledger {
    fn name(&self) -> ProjectionName {
        NAME
    }

    fn schema(&self) -> u32 {
        // 2: journal chunks in the binary form of `crate::codec` instead of JSON.
        2
    }

    fn working_set(&self) -> Box<dyn WorkingSet> {
        Box::new(LedgerSet { balances: Stage::new(NAME), chunks: Stage::new(NAME) })
    }

    fn export_csv(&self, tree: &sled::Tree, out: &mut dyn Write) -> Result<(), ProjectionError> {
        let mut csv = CsvWriter::new(out);
        csv.row(JOURNAL_CSV_HEADER)?;
        for item in tree.scan_prefix(b"j") {
            let (key, value) = item?;
            for entry in &decode_chunk(&key, &value)?.0 {
                write_entry_lines(&mut csv, entry)?;
            }
        }
        Ok(())
    }
}

/// The model's records in memory (see [`WorkingSet`]).
struct LedgerSet {
    balances: Stage<Totals>,
    chunks: Stage<JournalChunk>,
}

impl WorkingSet for LedgerSet {
    fn apply(&mut self, tree: &sled::Tree, events: &[Decoded]) -> Result<(), ProjectionError> {
        let LedgerSet { balances, chunks } = self;
        for decoded in events {
            let DomainRecord::Payment { payment_id, event } = &decoded.record else { continue };
            let Some(entry) = postings(decoded.position, *payment_id, event) else { continue };
            let invariant = |detail: String| ProjectionError::Invariant {
                projection: NAME.as_str(),
                position: decoded.position,
                detail,
            };
            if !entry.is_balanced() {
                debug_assert!(false, "unbalanced journal entry {entry:?}");
                return Err(invariant(format!("unbalanced journal entry {entry:?}")));
            }
            for line in &entry.lines {
                let mut totals = balances.get_mut(tree, &balance_key(entry.currency, line.account))?;
                let totals = totals.get_or_insert_with(Totals::default);
                let sum = |a: i64, b: i64| a.checked_add(b).ok_or_else(|| invariant("balance overflow".into()));
                totals.debit = sum(totals.debit, line.debit_minor)?;
                totals.credit = sum(totals.credit, line.credit_minor)?;
            }
            chunks.get_mut(tree, &chunk_key(decoded.position))?.get_or_insert_with(JournalChunk::default).0.push(entry);
        }
        Ok(())
    }

    fn flush(&mut self, batch: &mut sled::Batch) {
        self.balances.flush(batch);
        self.chunks.flush(batch);
    }

    fn bytes(&self) -> usize {
        self.balances.bytes() + self.chunks.bytes()
    }

    fn evict(&mut self) {
        self.balances.evict();
        self.chunks.evict();
    }

    fn forget_tree(&mut self) {
        self.balances.forget_tree();
        self.chunks.forget_tree();
    }

    fn assume_empty_tree(&mut self) {
        self.balances.assume_empty_tree();
        self.chunks.assume_empty_tree();
    }
}

const JOURNAL_CSV_HEADER: [&str; 8] =
    ["position", "at", "payment_id", "event_type", "currency", "account", "debit_minor", "credit_minor"];

fn write_entry_lines(csv: &mut CsvWriter<'_>, e: &JournalEntry) -> Result<(), ProjectionError> {
    for line in &e.lines {
        csv.row([
            e.position.to_string(),
            e.at.to_string(),
            e.payment_id.to_string(),
            e.event_type.clone(),
            e.currency.to_string(),
            line.account.as_str().to_string(),
            line.debit_minor.to_string(),
            line.credit_minor.to_string(),
        ])?;
    }
    Ok(())
}

fn decode_chunk(key: &[u8], value: &[u8]) -> Result<JournalChunk, ProjectionError> {
    JournalChunk::decode(value).ok_or_else(|| ProjectionError::Corrupt {
        projection: NAME.as_str(),
        key: format!("{key:?}"),
        detail: "journal entry".into(),
    })
}

/// An account's totals in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AccountBalance {
    pub account: Account,
    pub kind: AccountKind,
    pub currency: Currency,
    pub debit_minor: i64,
    pub credit_minor: i64,
    /// On the account's normal side: debit − credit for assets, credit − debit otherwise.
    pub balance_minor: i64,
}

/// Every account that was ever posted to, by currency then account.
pub fn accounts(tree: &sled::Tree, currency: Option<Currency>) -> Result<Vec<AccountBalance>, ProjectionError> {
    let mut out = Vec::new();
    for item in tree.scan_prefix(b"b") {
        let (key, value) = item?;
        let corrupt = || ProjectionError::Corrupt {
            projection: NAME.as_str(),
            key: format!("{key:?}"),
            detail: "balance".into(),
        };
        let cur = key.get(1..4).and_then(keys::parse_currency).ok_or_else(corrupt)?;
        let account = key.get(4..).and_then(Account::from_name).ok_or_else(corrupt)?;
        let totals = Totals::decode(&value).ok_or_else(corrupt)?;
        if currency.is_some_and(|c| c != cur) {
            continue;
        }
        let kind = account.kind();
        let balance = match kind {
            AccountKind::Asset => totals.debit.saturating_sub(totals.credit),
            AccountKind::Liability | AccountKind::Revenue => totals.credit.saturating_sub(totals.debit),
        };
        out.push(AccountBalance {
            account,
            kind,
            currency: cur,
            debit_minor: totals.debit,
            credit_minor: totals.credit,
            balance_minor: balance,
        });
    }
    out.sort_by_key(|a| (a.currency, a.account));
    Ok(out)
}

/// The trial balance of one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CurrencyTrialBalance {
    pub currency: Currency,
    pub debit_minor: i64,
    pub credit_minor: i64,
    /// Debits − credits over every account: 0 when the books balance.
    pub difference_minor: i64,
    pub balanced: bool,
    pub accounts: Vec<AccountBalance>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrialBalance {
    /// True when every currency balances.
    pub balanced: bool,
    pub currencies: Vec<CurrencyTrialBalance>,
}

/// Sums every account per currency.
pub fn trial_balance(tree: &sled::Tree) -> Result<TrialBalance, ProjectionError> {
    let mut by_currency: BTreeMap<Currency, Vec<AccountBalance>> = BTreeMap::new();
    for account in accounts(tree, None)? {
        by_currency.entry(account.currency).or_default().push(account);
    }
    let currencies: Vec<CurrencyTrialBalance> = by_currency
        .into_iter()
        .map(|(currency, accounts)| {
            let debit: i128 = accounts.iter().map(|a| i128::from(a.debit_minor)).sum();
            let credit: i128 = accounts.iter().map(|a| i128::from(a.credit_minor)).sum();
            let clamp = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
            CurrencyTrialBalance {
                currency,
                debit_minor: clamp(debit),
                credit_minor: clamp(credit),
                difference_minor: clamp(debit - credit),
                balanced: debit == credit,
                accounts,
            }
        })
        .collect();
    Ok(TrialBalance { balanced: currencies.iter().all(|c| c.balanced), currencies })
}

/// A page of the journal: entries with position > `after_position` (`after` over
/// HTTP), oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalPage {
    pub data: Vec<JournalEntry>,
    pub has_more: bool,
    /// Pass as `after_position` (`after` over HTTP) for the next page.
    pub next_cursor: Option<u64>,
}

pub fn journal(tree: &sled::Tree, after_position: u64, limit: usize) -> Result<JournalPage, ProjectionError> {
    if !(1..=MAX_JOURNAL_PAGE).contains(&limit) {
        return Err(ProjectionError::invalid("limit", format!("must be 1 to {MAX_JOURNAL_PAGE}")));
    }
    let start = chunk_key(after_position.saturating_add(1));
    let mut data = Vec::with_capacity(limit);
    for item in tree.range(start..keys::prefix_end(b"j")) {
        let (key, value) = item?;
        for entry in decode_chunk(&key, &value)?.0 {
            if entry.position <= after_position {
                continue;
            }
            if data.len() == limit {
                let next_cursor = data.last().map(|e: &JournalEntry| e.position);
                return Ok(JournalPage { data, has_more: true, next_cursor });
            }
            data.push(entry);
        }
    }
    Ok(JournalPage { data, has_more: false, next_cursor: None })
}

/// Writes account balances (e.g. a trial balance's) as CSV.
pub fn write_accounts_csv(accounts: &[AccountBalance], out: &mut dyn Write) -> Result<(), ProjectionError> {
    let mut csv = CsvWriter::new(out);
    csv.row(["currency", "account", "kind", "debit_minor", "credit_minor", "balance_minor"])?;
    for a in accounts {
        let kind = match a.kind {
            AccountKind::Asset => "asset",
            AccountKind::Liability => "liability",
            AccountKind::Revenue => "revenue",
        };
        csv.row([
            a.currency.to_string(),
            a.account.as_str().to_string(),
            kind.to_string(),
            a.debit_minor.to_string(),
            a.credit_minor.to_string(),
            a.balance_minor.to_string(),
        ])?;
    }
    Ok(())
}

/// Writes journal entries (one CSV line per journal line).
pub fn write_journal_csv(entries: &[JournalEntry], out: &mut dyn Write) -> Result<(), ProjectionError> {
    let mut csv = CsvWriter::new(out);
    csv.row(JOURNAL_CSV_HEADER)?;
    for e in entries {
        write_entry_lines(&mut csv, e)?;
    }
    Ok(())
}
