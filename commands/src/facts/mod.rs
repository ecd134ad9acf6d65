//! Facts about the past that commands need and a single stream cannot give:
//! velocity counts for the risk rules, each merchant's daily volume, the API
//! keys, and which authorizations will expire when.
//!
//! Fed by one in-order consumer of the log (a subscription from position 0),
//! so every node that shares a log derives the same facts. A command may see
//! facts a few milliseconds behind the log; limits checked against them are
//! a risk control, not an accounting invariant (the ledger is exact).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use paystream_domain::api_key::{ApiKeyEvent, Role};
use paystream_domain::id::{ApiKeyId, MerchantId, PaymentId};
use paystream_domain::payment::PaymentEvent;
use paystream_domain::risk::RiskSignals;
use paystream_domain::time::Timestamp;
use paystream_domain::{Currency, Money};
use paystream_store::{EventStore, Position, RecordedEvent, StoreError};
use tokio::sync::watch;

use crate::bus::decode;
use crate::error::CommandError;

const HOUR_SECONDS: i64 = 3_600;
/// Events per read while catching up with the log at start.
pub const CATCH_UP_BATCH: usize = 10_000;
const DAY_SECONDS: i64 = 86_400;

/// An API key as the authenticator needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: ApiKeyId,
    pub role: Role,
    pub merchant_id: Option<MerchantId>,
    pub revoked: bool,
}

/// What we remember of a payment until the acquirer has answered.
#[derive(Debug, Clone)]
struct PendingPayment {
    merchant_id: MerchantId,
    instrument: String,
}

#[derive(Default)]
struct Inner {
    daily_volume: HashMap<(MerchantId, time::Date, Currency), i64>,
    instrument_attempts: HashMap<String, VecDeque<i64>>,
    instrument_declines: HashMap<String, VecDeque<i64>>,
    customer_attempts: HashMap<(MerchantId, String), VecDeque<i64>>,
    pending: HashMap<PaymentId, PendingPayment>,
    keys_by_hash: HashMap<String, KeyRecord>,
    key_hashes: HashMap<ApiKeyId, String>,
    expiring: BTreeSet<(i64, PaymentId)>,
    expires_at: HashMap<PaymentId, i64>,
    /// Latest event time seen (unix seconds): the clock the windows are pruned by.
    latest_at: i64,
    /// Events applied since the last prune.
    since_prune: usize,
}

/// How often (in events applied) windows and volumes nobody can ask about any more
/// are forgotten: without it every card, customer and day ever seen would stay in
/// memory for the life of the process.
const PRUNE_EVERY_EVENTS: usize = 10_000;
/// Slack for clocks: a window is forgotten only this long after it stopped counting.
const PRUNE_SLACK_SECONDS: i64 = 300;

fn count_since(window: Option<&VecDeque<i64>>, since: i64) -> u32 {
    window.map_or(0, |w| w.iter().filter(|&&t| t >= since).count().try_into().unwrap_or(u32::MAX))
}

/// Keeps the windows with an entry newer than `since`.
fn prune_windows<K: Eq + std::hash::Hash>(windows: &mut HashMap<K, VecDeque<i64>>, since: i64) {
    windows.retain(|_, window| window.back().is_some_and(|&last| last >= since));
}

fn record(window: &mut VecDeque<i64>, at: i64, keep_seconds: i64) {
    while window.front().is_some_and(|&t| t < at - keep_seconds) {
        window.pop_front();
    }
    window.push_back(at);
}

impl Inner {
    /// Forgets, every [`PRUNE_EVERY_EVENTS`], what no risk rule or limit can read
    /// any more: velocity windows past their span (by the latest event time, so every
    /// node prunes alike) and daily volumes of days before yesterday (UTC).
    fn maybe_prune(&mut self) {
        self.since_prune += 1;
        if self.since_prune < PRUNE_EVERY_EVENTS {
            return;
        }
        self.since_prune = 0;
        let now = self.latest_at;
        prune_windows(&mut self.instrument_attempts, now - HOUR_SECONDS - PRUNE_SLACK_SECONDS);
        prune_windows(&mut self.customer_attempts, now - HOUR_SECONDS - PRUNE_SLACK_SECONDS);
        prune_windows(&mut self.instrument_declines, now - DAY_SECONDS - PRUNE_SLACK_SECONDS);
        if let Some(yesterday) = Timestamp::from_unix_seconds(now - DAY_SECONDS).map(|t| t.utc_date()) {
            self.daily_volume.retain(|(_, day, _), _| *day >= yesterday);
        }
    }

    fn apply_payment(&mut self, payment_id: PaymentId, event: &PaymentEvent) {
        use PaymentEvent as E;
        match event {
            E::PaymentInitiated { merchant_id, method, customer, initiated_at, .. } => {
                let at = initiated_at.unix_seconds();
                self.latest_at = self.latest_at.max(at);
                let instrument = method.instrument_key();
                record(self.instrument_attempts.entry(instrument.clone()).or_default(), at, HOUR_SECONDS);
                if let Some(customer_id) = &customer.id {
                    let key = (*merchant_id, customer_id.clone());
                    record(self.customer_attempts.entry(key).or_default(), at, HOUR_SECONDS);
                }
                self.pending.insert(payment_id, PendingPayment { merchant_id: *merchant_id, instrument });
            }
            E::PaymentAuthorized { amount, authorized_at, expires_at, .. } => {
                if let Some(pending) = self.pending.remove(&payment_id) {
                    let key = (pending.merchant_id, authorized_at.utc_date(), amount.currency);
                    *self.daily_volume.entry(key).or_default() += amount.amount_minor;
                }
                let at = expires_at.unix_seconds();
                self.expiring.insert((at, payment_id));
                self.expires_at.insert(payment_id, at);
            }
            E::PaymentDeclined { declined_at, .. } => {
                if let Some(pending) = self.pending.remove(&payment_id) {
                    let window = self.instrument_declines.entry(pending.instrument).or_default();
                    record(window, declined_at.unix_seconds(), DAY_SECONDS);
                }
                self.stop_expiry(payment_id);
            }
            E::PaymentCaptured { final_capture: true, .. }
            | E::PaymentVoided { .. }
            | E::PaymentAuthorizationExpired { .. }
            | E::PaymentReviewRejected { .. } => self.stop_expiry(payment_id),
            _ => {}
        }
    }

    fn stop_expiry(&mut self, payment_id: PaymentId) {
        if let Some(at) = self.expires_at.remove(&payment_id) {
            self.expiring.remove(&(at, payment_id));
        }
    }

    fn apply_key(&mut self, event: &ApiKeyEvent) {
        match event {
            ApiKeyEvent::ApiKeyIssued { key_id, role, merchant_id, key_hash, .. } => {
                let record = KeyRecord { id: *key_id, role: *role, merchant_id: *merchant_id, revoked: false };
                self.keys_by_hash.insert(key_hash.clone(), record);
                self.key_hashes.insert(*key_id, key_hash.clone());
            }
            ApiKeyEvent::ApiKeyRevoked { key_id, .. } => {
                if let Some(record) = self.key_hashes.get(key_id).and_then(|h| self.keys_by_hash.get_mut(h)) {
                    record.revoked = true;
                }
            }
        }
    }
}

/// The facts, shared by every request handler.
pub struct Facts {
    inner: Mutex<Inner>,
    applied: watch::Sender<Position>,
}

impl Default for Facts {
    fn default() -> Self {
        Facts { inner: Mutex::default(), applied: watch::channel(0).0 }
    }
}

/// `payment-<uuid>` -> the payment's id.
fn payment_id_of(stream_id: &str) -> Option<PaymentId> {
    let uuid = stream_id.strip_prefix("payment-")?;
    uuid::Uuid::try_parse(uuid).ok().map(PaymentId::from_uuid)
}

impl Facts {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies one event of the log. Events must come in position order.
    pub fn apply(&self, event: &RecordedEvent) -> Result<(), CommandError> {
        self.apply_batch(std::slice::from_ref(event))
    }

    /// Applies events of the log in position order: one lock and one notification
    /// for the whole batch (how the log is read at start).
    pub fn apply_batch(&self, events: &[RecordedEvent]) -> Result<(), CommandError> {
        let Some(last) = events.last() else { return Ok(()) };
        {
            let mut inner = self.lock();
            for event in events {
                inner.maybe_prune();
                if event.event_type.starts_with("ApiKey") {
                    inner.apply_key(&decode::<ApiKeyEvent>(event)?);
                } else if event.event_type.starts_with("Payment") {
                    if let Some(payment_id) = payment_id_of(&event.stream_id) {
                        inner.apply_payment(payment_id, &decode::<PaymentEvent>(event)?);
                    }
                }
            }
        }
        self.applied.send_replace(last.position);
        Ok(())
    }

    /// Registers a key this process just issued, before the log consumer
    /// gets to it, so the key works as soon as its creation is acknowledged.
    pub fn apply_key_now(&self, event: &ApiKeyEvent) {
        self.lock().apply_key(event);
    }

    /// Last position applied.
    pub fn applied(&self) -> Position {
        *self.applied.borrow()
    }

    /// Waits until `position` is applied.
    pub async fn wait_for(&self, position: Position) {
        let mut receiver = self.applied.subscribe();
        // An error means the sender is gone, which cannot happen while `self` lives.
        let _ = receiver.wait_for(|applied| *applied >= position).await;
    }

    pub fn key_by_hash(&self, key_hash: &str) -> Option<KeyRecord> {
        self.lock().keys_by_hash.get(key_hash).cloned()
    }

    pub fn key_count(&self) -> usize {
        self.lock().keys_by_hash.len()
    }

    /// Volume authorized today (UTC) for the merchant in this currency.
    pub fn daily_volume(&self, merchant_id: MerchantId, currency: Currency, now: Timestamp) -> Money {
        let minor = self.lock().daily_volume.get(&(merchant_id, now.utc_date(), currency)).copied().unwrap_or(0);
        Money::new(minor, currency)
    }

    pub fn risk_signals(
        &self,
        merchant_id: MerchantId,
        instrument: &str,
        customer_id: Option<&str>,
        now: Timestamp,
    ) -> RiskSignals {
        let inner = self.lock();
        let at = now.unix_seconds();
        RiskSignals {
            instrument_attempts_last_hour: count_since(inner.instrument_attempts.get(instrument), at - HOUR_SECONDS),
            instrument_declines_last_day: count_since(inner.instrument_declines.get(instrument), at - DAY_SECONDS),
            customer_attempts_last_hour: customer_id.map_or(0, |c| {
                count_since(inner.customer_attempts.get(&(merchant_id, c.to_string())), at - HOUR_SECONDS)
            }),
        }
    }

    /// Authorizations whose hold lapsed by `now`, oldest first, at most `max`.
    pub fn due_expiries(&self, now: Timestamp, max: usize) -> Vec<PaymentId> {
        let cutoff = now.unix_seconds();
        self.lock().expiring.iter().take_while(|(at, _)| *at <= cutoff).take(max).map(|(_, id)| *id).collect()
    }

    /// Follows the log from position 1 for as long as the store is open: reads what
    /// is there in batches of [`CATCH_UP_BATCH`], then follows a subscription.
    pub async fn follow(self: Arc<Self>, store: Arc<dyn EventStore>) -> Result<(), CommandError> {
        loop {
            let batch = match store.read_all(self.applied() + 1, CATCH_UP_BATCH).await {
                Ok(batch) => batch,
                Err(StoreError::Closed) => return Ok(()),
                Err(error) => return Err(error.into()),
            };
            let full = batch.len() == CATCH_UP_BATCH;
            self.apply_batch(&batch)?;
            if !full {
                break;
            }
        }
        let mut subscription = store.subscribe(self.applied() + 1).await?;
        loop {
            match subscription.next().await {
                Ok(event) => self.apply(&event)?,
                Err(StoreError::Closed) => return Ok(()),
                Err(error) => return Err(error.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `PRUNE_EVERY_EVENTS`, windows that stopped counting (plus the slack) and
    /// daily volumes before yesterday are forgotten; everything a rule can still read
    /// stays.
    #[test]
    fn what_no_rule_can_read_any_more_is_forgotten() {
        let day = |d: u8| time::Date::from_calendar_date(2027, time::Month::January, d).unwrap_or(time::Date::MIN);
        let merchant = MerchantId::from_uuid(uuid::Uuid::from_u128(7));
        let now = Timestamp::from_unix_seconds(1_799_020_800).unwrap(); // 2027-01-04T00:00:00Z
        let at = now.unix_seconds();
        let mut inner = Inner { latest_at: at, ..Inner::default() };
        inner.instrument_attempts.insert("stale".into(), VecDeque::from([at - HOUR_SECONDS - PRUNE_SLACK_SECONDS - 1]));
        inner.instrument_attempts.insert("fresh".into(), VecDeque::from([at - HOUR_SECONDS]));
        inner.customer_attempts.insert((merchant, "stale".into()), VecDeque::from([at - 2 * HOUR_SECONDS]));
        inner.customer_attempts.insert((merchant, "fresh".into()), VecDeque::from([at - 60]));
        inner.instrument_declines.insert("stale".into(), VecDeque::from([at - 2 * DAY_SECONDS]));
        inner.instrument_declines.insert("fresh".into(), VecDeque::from([at - DAY_SECONDS + 60]));
        for d in [1, 2, 3, 4] {
            inner.daily_volume.insert((merchant, day(d), Currency::USD), 100);
        }
        for _ in 1..PRUNE_EVERY_EVENTS {
            inner.maybe_prune();
        }
        assert_eq!(inner.instrument_attempts.len(), 2, "nothing is pruned before the interval");
        inner.maybe_prune();
        assert_eq!(inner.instrument_attempts.keys().collect::<Vec<_>>(), ["fresh"]);
        assert_eq!(inner.customer_attempts.keys().map(|(_, c)| c.as_str()).collect::<Vec<_>>(), ["fresh"]);
        assert_eq!(inner.instrument_declines.keys().collect::<Vec<_>>(), ["fresh"]);
        let mut days: Vec<time::Date> = inner.daily_volume.keys().map(|(_, d, _)| *d).collect();
        days.sort();
        assert_eq!(days, [day(3), day(4)], "yesterday and today stay");
    }
}
