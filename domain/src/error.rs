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

/// Declares [`ErrorCode`] once: each code's variant, its stable string and
/// its kind; `ALL` and `ALL_STR` are derived, so no list is kept by hand.
macro_rules! error_codes {
    ($($variant:ident = $code:literal => $kind:ident,)*) => {
        /// The stable code of a [`DomainError`], one per variant.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];
            /// Every code's string, in declaration order.
            pub const ALL_STR: &'static [&'static str] = &[$($code,)*];

            /// The snake_case string the API returns and docs/errors.md lists.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// How the API treats the error.
            pub fn kind(self) -> ErrorKind {
                match self {
                    $(ErrorCode::$variant => ErrorKind::$kind,)*
                }
            }
        }
    };
}

error_codes! {
    AmountNotPositive = "amount_not_positive" => InvalidInput,
    AmountOverflow = "amount_overflow" => InvalidInput,
    CurrencyMismatch = "currency_mismatch" => InvalidInput,
    InvalidCardNumber = "invalid_card_number" => InvalidInput,
    InvalidExpiryMonth = "invalid_expiry_month" => InvalidInput,
    CardExpired = "card_expired" => InvalidInput,
    InvalidCvc = "invalid_cvc" => InvalidInput,
    InvalidField = "invalid_field" => InvalidInput,
    TooManyMetadataKeys = "too_many_metadata_keys" => InvalidInput,
    InvalidFeeSchedule = "invalid_fee_schedule" => InvalidInput,
    MerchantNotFound = "merchant_not_found" => NotFound,
    PaymentNotFound = "payment_not_found" => NotFound,
    DisputeNotFound = "dispute_not_found" => NotFound,
    ApiKeyNotFound = "api_key_not_found" => NotFound,
    ApiKeyAlreadyExists = "api_key_already_exists" => Rejected,
    ApiKeyAlreadyRevoked = "api_key_already_revoked" => Rejected,
    MerchantAlreadyExists = "merchant_already_exists" => Rejected,
    MerchantSuspended = "merchant_suspended" => Rejected,
    MerchantClosed = "merchant_closed" => Rejected,
    MerchantNotActive = "merchant_not_active" => Rejected,
    MerchantNotSuspended = "merchant_not_suspended" => Rejected,
    TierUnchanged = "tier_unchanged" => Rejected,
    AmountExceedsTierLimit = "amount_exceeds_tier_limit" => Rejected,
    DailyVolumeExceeded = "daily_volume_exceeded" => Rejected,
    PaymentAlreadyExists = "payment_already_exists" => Rejected,
    PaymentNotAwaitingAuthorization = "payment_not_awaiting_authorization" => Rejected,
    PaymentNotCapturable = "payment_not_capturable" => Rejected,
    AmountExceedsCapturable = "amount_exceeds_capturable" => Rejected,
    PaymentNotVoidable = "payment_not_voidable" => Rejected,
    PaymentNotRefundable = "payment_not_refundable" => Rejected,
    AmountExceedsRefundable = "amount_exceeds_refundable" => Rejected,
    PaymentNotUnderReview = "payment_not_under_review" => Rejected,
    PaymentNotDisputable = "payment_not_disputable" => Rejected,
    AmountExceedsDisputable = "amount_exceeds_disputable" => Rejected,
    DisputeAlreadyResolved = "dispute_already_resolved" => Rejected,
    AuthorizationExpired = "authorization_expired" => Rejected,
    AuthorizationNotExpired = "authorization_not_expired" => Rejected,
    NothingToSettle = "nothing_to_settle" => Rejected,
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
    /// `param` names the request field that named the merchant, if any.
    #[error("merchant not found")]
    MerchantNotFound { param: Option<&'static str> },
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
    /// The stable code of this error (docs/errors.md).
    pub fn error_code(&self) -> ErrorCode {
        use DomainError as D;
        match self {
            D::AmountNotPositive { .. } => ErrorCode::AmountNotPositive,
            D::AmountOverflow => ErrorCode::AmountOverflow,
            D::CurrencyMismatch { .. } => ErrorCode::CurrencyMismatch,
            D::InvalidCardNumber => ErrorCode::InvalidCardNumber,
            D::InvalidExpiryMonth => ErrorCode::InvalidExpiryMonth,
            D::CardExpired => ErrorCode::CardExpired,
            D::InvalidCvc => ErrorCode::InvalidCvc,
            D::InvalidField { .. } => ErrorCode::InvalidField,
            D::TooManyMetadataKeys { .. } => ErrorCode::TooManyMetadataKeys,
            D::InvalidFeeSchedule { .. } => ErrorCode::InvalidFeeSchedule,
            D::MerchantNotFound { .. } => ErrorCode::MerchantNotFound,
            D::PaymentNotFound => ErrorCode::PaymentNotFound,
            D::DisputeNotFound(_) => ErrorCode::DisputeNotFound,
            D::ApiKeyNotFound => ErrorCode::ApiKeyNotFound,
            D::ApiKeyAlreadyExists => ErrorCode::ApiKeyAlreadyExists,
            D::ApiKeyAlreadyRevoked => ErrorCode::ApiKeyAlreadyRevoked,
            D::MerchantAlreadyExists(_) => ErrorCode::MerchantAlreadyExists,
            D::MerchantSuspended => ErrorCode::MerchantSuspended,
            D::MerchantClosed => ErrorCode::MerchantClosed,
            D::MerchantNotActive { .. } => ErrorCode::MerchantNotActive,
            D::MerchantNotSuspended { .. } => ErrorCode::MerchantNotSuspended,
            D::TierUnchanged(_) => ErrorCode::TierUnchanged,
            D::AmountExceedsTierLimit { .. } => ErrorCode::AmountExceedsTierLimit,
            D::DailyVolumeExceeded { .. } => ErrorCode::DailyVolumeExceeded,
            D::PaymentAlreadyExists(_) => ErrorCode::PaymentAlreadyExists,
            D::PaymentNotAwaitingAuthorization { .. } => ErrorCode::PaymentNotAwaitingAuthorization,
            D::PaymentNotCapturable { .. } => ErrorCode::PaymentNotCapturable,
            D::AmountExceedsCapturable { .. } => ErrorCode::AmountExceedsCapturable,
            D::PaymentNotVoidable { .. } => ErrorCode::PaymentNotVoidable,
            D::PaymentNotRefundable { .. } => ErrorCode::PaymentNotRefundable,
            D::AmountExceedsRefundable { .. } => ErrorCode::AmountExceedsRefundable,
            D::PaymentNotUnderReview { .. } => ErrorCode::PaymentNotUnderReview,
            D::PaymentNotDisputable { .. } => ErrorCode::PaymentNotDisputable,
            D::AmountExceedsDisputable { .. } => ErrorCode::AmountExceedsDisputable,
            D::DisputeAlreadyResolved(_) => ErrorCode::DisputeAlreadyResolved,
            D::AuthorizationExpired => ErrorCode::AuthorizationExpired,
            D::AuthorizationNotExpired { .. } => ErrorCode::AuthorizationNotExpired,
            D::NothingToSettle => ErrorCode::NothingToSettle,
        }
    }

    /// The stable snake_case code (docs/errors.md).
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    pub fn kind(&self) -> ErrorKind {
        self.error_code().kind()
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
            MerchantNotFound { param } => *param,
            PaymentNotFound
            | ApiKeyNotFound
            | ApiKeyAlreadyExists
            | ApiKeyAlreadyRevoked
            | MerchantAlreadyExists(_)
            | MerchantSuspended
            | MerchantClosed
            | MerchantNotActive { .. }
            | MerchantNotSuspended { .. }
            | PaymentAlreadyExists(_)
            | PaymentNotAwaitingAuthorization { .. }
            | PaymentNotCapturable { .. }
            | PaymentNotVoidable { .. }
            | PaymentNotRefundable { .. }
            | PaymentNotUnderReview { .. }
            | PaymentNotDisputable { .. }
            | AuthorizationExpired
            | AuthorizationNotExpired { .. }
            | NothingToSettle => None,
        }
    }

    /// Every code, for docs and the test that each has a scenario (derived
    /// from [`ErrorCode::ALL`]).
    pub const ALL_CODES: &'static [&'static str] = ErrorCode::ALL_STR;
}
