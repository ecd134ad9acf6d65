//! The one error enum of the domain layer. Every rejected command is a typed
//! variant carrying the facts of the rejection; `code()` is the stable
//! snake_case string the API returns and docs/errors.md lists.

use crate::id::{DisputeId, MerchantId, PaymentId};
use crate::merchant::{MerchantStatus, Tier};
use crate::money::{Currency, Money, MoneyError};
use crate::payment::PaymentStatus;

/// How the API should treat an error: bad input (400, names a field), a
/// missing aggregate (404) or a business rule that refused the command (422).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidInput,
    NotFound,
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    // ---- invalid input: the request itself is wrong ----
    #[error("{param} must be a positive amount")]
    AmountNotPositive { param: &'static str },
    #[error("amount overflow")]
    AmountOverflow,
    #[error("currency {requested} does not match the payment currency {expected}")]
    CurrencyMismatch { expected: Currency, requested: Currency },
    #[error("the card number is not valid")]
    InvalidCardNumber,
    #[error("the card's expiry month must be 1 to 12")]
    InvalidExpiryMonth,
    #[error("the card has expired")]
    CardExpired,
    #[error("the card's security code must be 3 or 4 digits")]
    InvalidCvc,
    #[error("{param}: {reason}")]
    InvalidField { param: &'static str, reason: &'static str },
    #[error("metadata may hold at most {max} keys, got {count}")]
    TooManyMetadataKeys { max: usize, count: usize },
    #[error("fee schedule is invalid: {reason}")]
    InvalidFeeSchedule { reason: &'static str },

    // ---- not found ----
    #[error("merchant not found")]
    MerchantNotFound,
    #[error("payment not found")]
    PaymentNotFound,
    #[error("API key not found")]
    ApiKeyNotFound,
    #[error("dispute {0} not found on this payment")]
    DisputeNotFound(DisputeId),

    // ---- business rules ----
    #[error("the API key already exists")]
    ApiKeyAlreadyExists,
    #[error("the API key is already revoked")]
    ApiKeyAlreadyRevoked,
    #[error("merchant {0} already exists")]
    MerchantAlreadyExists(MerchantId),
    #[error("the merchant is suspended and cannot take payments")]
    MerchantSuspended,
    #[error("the merchant is closed")]
    MerchantClosed,
    #[error("the merchant is {status}; this needs an active merchant")]
    MerchantNotActive { status: MerchantStatus },
    #[error("the merchant is {status}; only a suspended merchant can be reactivated")]
    MerchantNotSuspended { status: MerchantStatus },
    #[error("the merchant is already in tier {0:?}")]
    TierUnchanged(Tier),
    #[error("{requested} is above the tier {tier:?} limit of {limit} per payment")]
    AmountExceedsTierLimit { tier: Tier, limit: Money, requested: Money },
    #[error("{requested} would take today's volume above the tier {tier:?} daily limit of {limit} (already {used})")]
    DailyVolumeExceeded { tier: Tier, limit: Money, used: Money, requested: Money },
    #[error("payment {0} already exists")]
    PaymentAlreadyExists(PaymentId),
    #[error("the payment is {status}; it is not waiting for an authorization result")]
    PaymentNotAwaitingAuthorization { status: PaymentStatus },
    #[error("the payment is {status} and cannot be captured")]
    PaymentNotCapturable { status: PaymentStatus },
    #[error("{requested} exceeds the capturable amount {capturable}")]
    AmountExceedsCapturable { capturable: Money, requested: Money },
    #[error("the payment is {status}; only an authorized payment without captures can be voided")]
    PaymentNotVoidable { status: PaymentStatus },
    #[error("the payment is {status} and has nothing to refund")]
    PaymentNotRefundable { status: PaymentStatus },
    #[error("{requested} exceeds the refundable amount {refundable}")]
    AmountExceedsRefundable { refundable: Money, requested: Money },
    #[error("the payment is {status}, not waiting for review")]
    PaymentNotUnderReview { status: PaymentStatus },
    #[error("the payment is {status}; only captured payments can be disputed")]
    PaymentNotDisputable { status: PaymentStatus },
    #[error("{requested} exceeds the disputable amount {disputable}")]
    AmountExceedsDisputable { disputable: Money, requested: Money },
    #[error("dispute {0} is already resolved")]
    DisputeAlreadyResolved(DisputeId),
    #[error("the authorization has expired; nothing more can be captured")]
    AuthorizationExpired,
    #[error("the authorization is {status} or still valid until its expiry")]
    AuthorizationNotExpired { status: PaymentStatus },
    #[error("nothing captured is waiting for settlement")]
    NothingToSettle,
}

impl From<MoneyError> for DomainError {
    fn from(error: MoneyError) -> Self {
        match error {
            MoneyError::CurrencyMismatch { left, right } => {
                DomainError::CurrencyMismatch { expected: left, requested: right }
            }
            MoneyError::Overflow => DomainError::AmountOverflow,
            MoneyError::UnknownCurrency(_) => {
                DomainError::InvalidField { param: "currency", reason: "unknown or unsupported currency" }
            }
            MoneyError::InvalidAmount { .. } => DomainError::InvalidField { param: "amount", reason: "not an amount" },
        }
    }
}

impl DomainError {
    /// The stable snake_case code (docs/errors.md).
    pub fn code(&self) -> &'static str {
        use DomainError::*;
        match self {
            AmountNotPositive { .. } => "amount_not_positive",
            AmountOverflow => "amount_overflow",
            CurrencyMismatch { .. } => "currency_mismatch",
            InvalidCardNumber => "invalid_card_number",
            InvalidExpiryMonth => "invalid_expiry_month",
            CardExpired => "card_expired",
            InvalidCvc => "invalid_cvc",
            InvalidField { .. } => "invalid_field",
            TooManyMetadataKeys { .. } => "too_many_metadata_keys",
            InvalidFeeSchedule { .. } => "invalid_fee_schedule",
            MerchantNotFound => "merchant_not_found",
            PaymentNotFound => "payment_not_found",
            DisputeNotFound(_) => "dispute_not_found",
            ApiKeyNotFound => "api_key_not_found",
            ApiKeyAlreadyExists => "api_key_already_exists",
            ApiKeyAlreadyRevoked => "api_key_already_revoked",
            MerchantAlreadyExists(_) => "merchant_already_exists",
            MerchantSuspended => "merchant_suspended",
            MerchantClosed => "merchant_closed",
            MerchantNotActive { .. } => "merchant_not_active",
            MerchantNotSuspended { .. } => "merchant_not_suspended",
            TierUnchanged(_) => "tier_unchanged",
            AmountExceedsTierLimit { .. } => "amount_exceeds_tier_limit",
            DailyVolumeExceeded { .. } => "daily_volume_exceeded",
            PaymentAlreadyExists(_) => "payment_already_exists",
            PaymentNotAwaitingAuthorization { .. } => "payment_not_awaiting_authorization",
            PaymentNotCapturable { .. } => "payment_not_capturable",
            AmountExceedsCapturable { .. } => "amount_exceeds_capturable",
            PaymentNotVoidable { .. } => "payment_not_voidable",
            PaymentNotRefundable { .. } => "payment_not_refundable",
            AmountExceedsRefundable { .. } => "amount_exceeds_refundable",
            PaymentNotUnderReview { .. } => "payment_not_under_review",
            PaymentNotDisputable { .. } => "payment_not_disputable",
            AmountExceedsDisputable { .. } => "amount_exceeds_disputable",
            DisputeAlreadyResolved(_) => "dispute_already_resolved",
            AuthorizationExpired => "authorization_expired",
            AuthorizationNotExpired { .. } => "authorization_not_expired",
            NothingToSettle => "nothing_to_settle",
        }
    }

    pub fn kind(&self) -> ErrorKind {
        use DomainError::*;
        match self {
            AmountNotPositive { .. }
            | AmountOverflow
            | CurrencyMismatch { .. }
            | InvalidCardNumber
            | InvalidExpiryMonth
            | CardExpired
            | InvalidCvc
            | InvalidField { .. }
            | TooManyMetadataKeys { .. }
            | InvalidFeeSchedule { .. } => ErrorKind::InvalidInput,
            MerchantNotFound | PaymentNotFound | DisputeNotFound(_) | ApiKeyNotFound => ErrorKind::NotFound,
            _ => ErrorKind::Rejected,
        }
    }

    /// The request field the error is about, in the API's dotted form.
    pub fn param(&self) -> Option<&'static str> {
        use DomainError::*;
        match self {
            AmountNotPositive { param } | InvalidField { param, .. } => Some(param),
            AmountOverflow
            | AmountExceedsTierLimit { .. }
            | DailyVolumeExceeded { .. }
            | AmountExceedsCapturable { .. }
            | AmountExceedsRefundable { .. }
            | AmountExceedsDisputable { .. } => Some("amount"),
            CurrencyMismatch { .. } => Some("currency"),
            InvalidCardNumber => Some("method.card.number"),
            InvalidExpiryMonth => Some("method.card.exp_month"),
            CardExpired => Some("method.card.exp_year"),
            InvalidCvc => Some("method.card.cvc"),
            TooManyMetadataKeys { .. } => Some("metadata"),
            InvalidFeeSchedule { .. } => Some("fees"),
            DisputeNotFound(_) | DisputeAlreadyResolved(_) => Some("dispute_id"),
            TierUnchanged(_) => Some("tier"),
            _ => None,
        }
    }

    /// Every code, for docs and the test that each has a scenario.
    pub const ALL_CODES: &'static [&'static str] = &[
        "amount_not_positive",
        "amount_overflow",
        "currency_mismatch",
        "invalid_card_number",
        "invalid_expiry_month",
        "card_expired",
        "invalid_cvc",
        "invalid_field",
        "too_many_metadata_keys",
        "invalid_fee_schedule",
        "merchant_not_found",
        "payment_not_found",
        "dispute_not_found",
        "api_key_not_found",
        "api_key_already_exists",
        "api_key_already_revoked",
        "merchant_already_exists",
        "merchant_suspended",
        "merchant_closed",
        "merchant_not_active",
        "merchant_not_suspended",
        "tier_unchanged",
        "amount_exceeds_tier_limit",
        "daily_volume_exceeded",
        "payment_already_exists",
        "payment_not_awaiting_authorization",
        "payment_not_capturable",
        "amount_exceeds_capturable",
        "payment_not_voidable",
        "payment_not_refundable",
        "amount_exceeds_refundable",
        "payment_not_under_review",
        "payment_not_disputable",
        "amount_exceeds_disputable",
        "dispute_already_resolved",
        "authorization_expired",
        "authorization_not_expired",
        "nothing_to_settle",
    ];
}
