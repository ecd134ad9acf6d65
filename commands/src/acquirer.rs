//! Acquirers: who actually moves the money. Real connectors (card schemes,
//! Alipay, WeChat Pay, UnionPay) implement [`Acquirer`]; the sandbox decides
//! deterministically from the instrument so tests and integrators can
//! trigger every outcome (docs/api.md, "Sandbox").

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
/// 4000000000000119 fails `acquirer_unavailable`. Wallets, bank transfers,
/// QR codes and NFC approve unless their account id / payer id / device
/// token starts with `decline`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SandboxAcquirer;

pub const SANDBOX_DECLINED_CARD: &str = "4000000000000002";
pub const SANDBOX_INSUFFICIENT_FUNDS_CARD: &str = "4000000000009995";
pub const SANDBOX_UNAVAILABLE_CARD: &str = "4000000000000119";

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
}

#[async_trait]
impl Acquirer for SandboxAcquirer {
    async fn authorize(&self, request: AuthorizationRequest<'_>) -> AcquirerOutcome {
        SandboxAcquirer::decide(request.method)
    }
}
