//! Acquirers: who actually moves the money. Real connectors (card schemes,
//! Alipay, WeChat Pay, UnionPay) implement [`Acquirer`]; the sandbox decides
//! deterministically from the instrument so tests and integrators can
//! trigger every outcome (docs/api.md, "Sandbox").

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use paystream_domain::id::PaymentId;
use paystream_domain::method::PaymentMethodInput;
use paystream_domain::payment::{AcquirerOutcome, DeclineCode};
use paystream_domain::Money;
use uuid::Uuid;

/// How long an authorization call may take before it counts as unavailable.
pub const ACQUIRER_TIMEOUT: Duration = Duration::from_secs(10);

/// What is sent to the acquirer. The instrument still holds the full card
/// number here, in memory only: this is the one place it is used.
#[derive(Debug)]
pub struct AuthorizationRequest<'a> {
    pub payment_id: PaymentId,
    pub amount: Money,
    pub method: &'a PaymentMethodInput,
}

#[async_trait]
pub trait Acquirer: Send + Sync + 'static {
    /// Asks the acquirer to hold `amount`. Failures to reach it are answered
    /// as `Declined { AcquirerUnavailable }`: nothing is held then.
    async fn authorize(&self, request: AuthorizationRequest<'_>) -> AcquirerOutcome;

    /// The outcome of an earlier authorization of `payment_id` (the payment id
    /// is the acquirer's idempotency key); `None` when the acquirer has no record
    /// of it, so it holds nothing for it.
    async fn lookup(&self, payment_id: PaymentId) -> Option<AcquirerOutcome>;
}

/// The acquirer did not answer a lookup within [`ACQUIRER_TIMEOUT`]: nothing is
/// known, ask again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupTimedOut;

/// Calls `acquirer.lookup` with [`ACQUIRER_TIMEOUT`].
pub async fn lookup_with_timeout(
    acquirer: &dyn Acquirer,
    payment_id: PaymentId,
) -> Result<Option<AcquirerOutcome>, LookupTimedOut> {
    tokio::time::timeout(ACQUIRER_TIMEOUT, acquirer.lookup(payment_id)).await.map_err(|_| LookupTimedOut)
}

/// Calls `acquirer.authorize` with [`ACQUIRER_TIMEOUT`].
pub async fn authorize_with_timeout(acquirer: &dyn Acquirer, request: AuthorizationRequest<'_>) -> AcquirerOutcome {
    match tokio::time::timeout(ACQUIRER_TIMEOUT, acquirer.authorize(request)).await {
        Ok(outcome) => outcome,
        Err(_) => AcquirerOutcome::Declined { decline_code: DeclineCode::AcquirerUnavailable },
    }
}

/// The sandbox acquirer. Cards 4242424242424242, 5555555555554444 and
/// 6200000000000005 (and any other valid card) approve; 4000000000000002
/// declines `card_declined`; 4000000000009995 `insufficient_funds`;
/// 4000000000000119 fails `acquirer_unavailable`; 4000000000005977 approves
/// after [`SANDBOX_SLOW_DELAY`]. Wallets, bank transfers, QR codes and NFC
/// approve unless their account id / payer id / device token starts with
/// `decline`.
///
/// It remembers the outcome of the last [`SANDBOX_REMEMBERED_AUTHORIZATIONS`]
/// authorizations it answered in this process (from the moment it decided,
/// so a lookup during the slow card's delay finds it) and answers lookups
/// from that memory; after a restart it has no record.
#[derive(Debug, Default)]
pub struct SandboxAcquirer {
    answered: Mutex<Answered>,
}

#[derive(Debug, Default)]
struct Answered {
    outcomes: HashMap<PaymentId, AcquirerOutcome>,
    /// Oldest first, to forget the oldest beyond the bound.
    order: VecDeque<PaymentId>,
}

pub const SANDBOX_DECLINED_CARD: &str = "4000000000000002";
pub const SANDBOX_INSUFFICIENT_FUNDS_CARD: &str = "4000000000009995";
pub const SANDBOX_UNAVAILABLE_CARD: &str = "4000000000000119";
/// Approves, after [`SANDBOX_SLOW_DELAY`]: lets tests stop a server between a
/// payment's initiation and the acquirer's answer.
pub const SANDBOX_SLOW_CARD: &str = "4000000000005977";
/// How long the sandbox takes to answer for [`SANDBOX_SLOW_CARD`].
pub const SANDBOX_SLOW_DELAY: Duration = Duration::from_secs(5);
/// Most authorization outcomes the sandbox remembers for lookups.
pub const SANDBOX_REMEMBERED_AUTHORIZATIONS: usize = 16_384;

const _: () = assert!(SANDBOX_SLOW_DELAY.as_millis() < ACQUIRER_TIMEOUT.as_millis());

impl SandboxAcquirer {
    pub fn decide(method: &PaymentMethodInput) -> AcquirerOutcome {
        let declined = |decline_code| AcquirerOutcome::Declined { decline_code };
        let instrument_id = match method {
            PaymentMethodInput::Card { card } => match card.number.expose_digits() {
                SANDBOX_DECLINED_CARD => return declined(DeclineCode::CardDeclined),
                SANDBOX_INSUFFICIENT_FUNDS_CARD => return declined(DeclineCode::InsufficientFunds),
                SANDBOX_UNAVAILABLE_CARD => return declined(DeclineCode::AcquirerUnavailable),
                _ => "",
            },
            PaymentMethodInput::BankTransfer { bank_transfer } => bank_transfer.account_id.as_str(),
            PaymentMethodInput::Wallet { wallet } => wallet.account_id.as_str(),
            PaymentMethodInput::QrCode { qr_code } => qr_code.payer_id.as_str(),
            PaymentMethodInput::Nfc { nfc } => nfc.device_token.expose(),
        };
        if instrument_id.starts_with("decline") {
            return declined(DeclineCode::InstrumentDeclined);
        }
        AcquirerOutcome::Approved { acquirer_reference: format!("sbx_{}", Uuid::now_v7().simple()) }
    }

    fn remember(&self, payment_id: PaymentId, outcome: &AcquirerOutcome) {
        let mut answered = self.answered.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if answered.outcomes.insert(payment_id, outcome.clone()).is_none() {
            answered.order.push_back(payment_id);
        }
        while answered.order.len() > SANDBOX_REMEMBERED_AUTHORIZATIONS {
            if let Some(oldest) = answered.order.pop_front() {
                answered.outcomes.remove(&oldest);
            }
        }
    }
}

fn is_slow(method: &PaymentMethodInput) -> bool {
    matches!(method, PaymentMethodInput::Card { card } if card.number.expose_digits() == SANDBOX_SLOW_CARD)
}

#[async_trait]
impl Acquirer for SandboxAcquirer {
    async fn authorize(&self, request: AuthorizationRequest<'_>) -> AcquirerOutcome {
        let outcome = SandboxAcquirer::decide(request.method);
        // An acquirer that could not be reached keeps no record.
        if outcome != (AcquirerOutcome::Declined { decline_code: DeclineCode::AcquirerUnavailable }) {
            self.remember(request.payment_id, &outcome);
        }
        if is_slow(request.method) {
            tokio::time::sleep(SANDBOX_SLOW_DELAY).await;
        }
        outcome
    }

    async fn lookup(&self, payment_id: PaymentId) -> Option<AcquirerOutcome> {
        let answered = self.answered.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        answered.outcomes.get(&payment_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn card(number: &str) -> PaymentMethodInput {
        serde_json::from_value(serde_json::json!({
            "type": "card", "card": {"number": number, "exp_month": 12, "exp_year": 2031, "cvc": "123"}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn the_sandbox_answers_lookups_for_what_it_authorized_in_this_process() {
        let sandbox = SandboxAcquirer::default();
        let amount = Money::new(100, paystream_domain::Currency::USD);
        let (approved, unavailable, unknown) = (
            PaymentId::from_uuid(Uuid::now_v7()),
            PaymentId::from_uuid(Uuid::now_v7()),
            PaymentId::from_uuid(Uuid::now_v7()),
        );
        let method = card("4242424242424242");
        let outcome = sandbox.authorize(AuthorizationRequest { payment_id: approved, amount, method: &method }).await;
        assert!(matches!(outcome, AcquirerOutcome::Approved { .. }));
        let method = card(SANDBOX_UNAVAILABLE_CARD);
        sandbox.authorize(AuthorizationRequest { payment_id: unavailable, amount, method: &method }).await;
        assert_eq!(sandbox.lookup(approved).await, Some(outcome));
        assert_eq!(sandbox.lookup(unavailable).await, None, "unreachable: no record");
        assert_eq!(sandbox.lookup(unknown).await, None);
        assert!(matches!(SandboxAcquirer::decide(&card(SANDBOX_SLOW_CARD)), AcquirerOutcome::Approved { .. }));
    }
}
