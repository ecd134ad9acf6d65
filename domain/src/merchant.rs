//! The Merchant aggregate: onboarding, risk tier and its limits, fees,
//! suspension, reactivation and closure.

use serde::{Deserialize, Serialize};

use crate::aggregate::{Aggregate, Context, DomainEvent};
use crate::country::CountryCode;
use crate::error::DomainError;
use crate::id::MerchantId;
use crate::money::{Currency, Money, MoneyError};
use crate::time::Timestamp;

/// Risk tier. A is the most trusted (highest limits), D the tightest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Tier {
    A,
    B,
    C,
    D,
}

/// Limits a tier sets, in whole major units of the payment's currency
/// (so "10,000" is 10,000.00 USD, 10,000 JPY, 10,000.000 KWD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierLimits {
    pub max_single_payment_major: i64,
    pub max_daily_volume_major: i64,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::A, Tier::B, Tier::C, Tier::D];

    /// Default limits per tier (docs/events.md, "Tier limits").
    pub const fn limits(self) -> TierLimits {
        match self {
            Tier::A => TierLimits { max_single_payment_major: 100_000, max_daily_volume_major: 5_000_000 },
            Tier::B => TierLimits { max_single_payment_major: 25_000, max_daily_volume_major: 1_000_000 },
            Tier::C => TierLimits { max_single_payment_major: 5_000, max_daily_volume_major: 100_000 },
            Tier::D => TierLimits { max_single_payment_major: 1_000, max_daily_volume_major: 10_000 },
        }
    }

    pub fn max_single_payment(self, currency: Currency) -> Result<Money, MoneyError> {
        Money::from_major(self.limits().max_single_payment_major, currency)
    }

    pub fn max_daily_volume(self, currency: Currency) -> Result<Money, MoneyError> {
        Money::from_major(self.limits().max_daily_volume_major, currency)
    }
}

/// What the platform charges a merchant per payment: a percentage in basis
/// points of each captured amount, plus a fixed amount charged once, on the
/// first capture, in minor units of the payment's currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeSchedule {
    pub percent_bps: u32,
    pub fixed_minor: i64,
}

impl FeeSchedule {
    /// The highest percentage fee accepted: 10%.
    pub const MAX_PERCENT_BPS: u32 = 1_000;
    /// The highest fixed fee accepted, in minor units.
    pub const MAX_FIXED_MINOR: i64 = 100_000;

    pub fn validate(&self) -> Result<(), DomainError> {
        if self.percent_bps > Self::MAX_PERCENT_BPS {
            return Err(DomainError::InvalidFeeSchedule { reason: "percent_bps must be at most 1000 (10%)" });
        }
        if !(0..=Self::MAX_FIXED_MINOR).contains(&self.fixed_minor) {
            return Err(DomainError::InvalidFeeSchedule { reason: "fixed must be between 0 and 100000 minor units" });
        }
        Ok(())
    }

    /// The fee on one capture: `percent_bps` of the amount (half away from
    /// zero) plus the fixed part when it is the payment's first capture.
    pub fn fee_for_capture(&self, amount: Money, first_capture: bool) -> Result<Money, MoneyError> {
        let percent = amount.percent_bps(self.percent_bps)?;
        let fixed = Money::new(if first_capture { self.fixed_minor } else { 0 }, amount.currency);
        percent.checked_add(fixed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum MerchantStatus {
    Active,
    Suspended,
    Closed,
}

impl std::fmt::Display for MerchantStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MerchantStatus::Active => "active",
            MerchantStatus::Suspended => "suspended",
            MerchantStatus::Closed => "closed",
        })
    }
}

/// The state of one merchant stream after onboarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merchant {
    pub id: MerchantId,
    pub name: String,
    pub country: CountryCode,
    pub default_currency: Currency,
    pub settlement_currency: Currency,
    pub tier: Tier,
    pub fees: FeeSchedule,
    pub status: MerchantStatus,
    pub onboarded_at: Timestamp,
}

impl Merchant {
    /// Refuses payments for a merchant that is not active.
    pub fn ensure_can_take_payments(&self) -> Result<(), DomainError> {
        match self.status {
            MerchantStatus::Active => Ok(()),
            MerchantStatus::Suspended => Err(DomainError::MerchantSuspended),
            MerchantStatus::Closed => Err(DomainError::MerchantClosed),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MerchantCommand {
    Onboard {
        merchant_id: MerchantId,
        name: String,
        country: CountryCode,
        default_currency: Currency,
        settlement_currency: Currency,
        tier: Tier,
        fees: FeeSchedule,
        now: Timestamp,
    },
    ChangeTier {
        tier: Tier,
        reason: Option<String>,
        now: Timestamp,
    },
    Suspend {
        reason: String,
        now: Timestamp,
    },
    Reactivate {
        now: Timestamp,
    },
    Close {
        reason: Option<String>,
        now: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum MerchantEvent {
    MerchantOnboarded {
        merchant_id: MerchantId,
        name: String,
        country: CountryCode,
        default_currency: Currency,
        settlement_currency: Currency,
        tier: Tier,
        fees: FeeSchedule,
        onboarded_at: Timestamp,
    },
    MerchantTierChanged {
        from: Tier,
        to: Tier,
        #[serde(default)]
        reason: Option<String>,
        changed_at: Timestamp,
    },
    MerchantSuspended {
        reason: String,
        suspended_at: Timestamp,
    },
    MerchantReactivated {
        reactivated_at: Timestamp,
    },
    MerchantClosed {
        #[serde(default)]
        reason: Option<String>,
        closed_at: Timestamp,
    },
}

impl DomainEvent for MerchantEvent {
    fn event_type(&self) -> &'static str {
        match self {
            MerchantEvent::MerchantOnboarded { .. } => "MerchantOnboarded",
            MerchantEvent::MerchantTierChanged { .. } => "MerchantTierChanged",
            MerchantEvent::MerchantSuspended { .. } => "MerchantSuspended",
            MerchantEvent::MerchantReactivated { .. } => "MerchantReactivated",
            MerchantEvent::MerchantClosed { .. } => "MerchantClosed",
        }
    }
}

/// Longest merchant name accepted, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest free-text reason accepted, in characters.
pub const MAX_REASON_CHARS: usize = 500;

pub(crate) fn validate_text(
    param: &'static str,
    text: &str,
    max_chars: usize,
    required: bool,
) -> Result<(), DomainError> {
    if required && text.trim().is_empty() {
        return Err(DomainError::InvalidField { param, reason: "must not be empty" });
    }
    if text.chars().count() > max_chars {
        return Err(DomainError::InvalidField { param, reason: "is too long" });
    }
    if text.chars().any(char::is_control) {
        return Err(DomainError::InvalidField { param, reason: "must not contain control characters" });
    }
    Ok(())
}

fn decide_new(command: MerchantCommand) -> Result<Vec<MerchantEvent>, DomainError> {
    match command {
        MerchantCommand::Onboard {
            merchant_id,
            name,
            country,
            default_currency,
            settlement_currency,
            tier,
            fees,
            now,
        } => {
            validate_text("name", &name, MAX_NAME_CHARS, true)?;
            fees.validate()?;
            Ok(vec![MerchantEvent::MerchantOnboarded {
                merchant_id,
                name: name.trim().to_string(),
                country,
                default_currency,
                settlement_currency,
                tier,
                fees,
                onboarded_at: now,
            }])
        }
        _ => Err(DomainError::MerchantNotFound),
    }
}

/// The Merchant aggregate.
#[derive(Debug)]
pub struct MerchantAggregate;

impl Aggregate for MerchantAggregate {
    const STREAM_CATEGORY: &'static str = "merchant";
    type State = Option<Merchant>;
    type Command = MerchantCommand;
    type Event = MerchantEvent;

    fn decide(
        state: &Option<Merchant>,
        command: MerchantCommand,
        _context: &Context,
    ) -> Result<Vec<MerchantEvent>, DomainError> {
        use MerchantCommand as C;
        use MerchantEvent as E;
        let merchant = match state {
            Some(merchant) => merchant,
            None => return decide_new(command),
        };
        match command {
            C::Onboard { .. } => Err(DomainError::MerchantAlreadyExists(merchant.id)),
            C::ChangeTier { tier, reason, now } => {
                if merchant.status == MerchantStatus::Closed {
                    return Err(DomainError::MerchantClosed);
                }
                if tier == merchant.tier {
                    return Err(DomainError::TierUnchanged(tier));
                }
                if let Some(reason) = &reason {
                    validate_text("reason", reason, MAX_REASON_CHARS, false)?;
                }
                Ok(vec![E::MerchantTierChanged { from: merchant.tier, to: tier, reason, changed_at: now }])
            }
            C::Suspend { reason, now } => {
                validate_text("reason", &reason, MAX_REASON_CHARS, false)?;
                if merchant.status != MerchantStatus::Active {
                    return Err(DomainError::MerchantNotActive { status: merchant.status });
                }
                Ok(vec![E::MerchantSuspended { reason, suspended_at: now }])
            }
            C::Reactivate { now } => {
                if merchant.status != MerchantStatus::Suspended {
                    return Err(DomainError::MerchantNotSuspended { status: merchant.status });
                }
                Ok(vec![E::MerchantReactivated { reactivated_at: now }])
            }
            C::Close { reason, now } => {
                if merchant.status == MerchantStatus::Closed {
                    return Err(DomainError::MerchantClosed);
                }
                if let Some(reason) = &reason {
                    validate_text("reason", reason, MAX_REASON_CHARS, false)?;
                }
                Ok(vec![E::MerchantClosed { reason, closed_at: now }])
            }
        }
    }

    fn evolve(state: Option<Merchant>, event: &MerchantEvent) -> Option<Merchant> {
        use MerchantEvent as E;
        match (state, event) {
            (
                _,
                E::MerchantOnboarded {
                    merchant_id,
                    name,
                    country,
                    default_currency,
                    settlement_currency,
                    tier,
                    fees,
                    onboarded_at,
                },
            ) => Some(Merchant {
                id: *merchant_id,
                name: name.clone(),
                country: *country,
                default_currency: *default_currency,
                settlement_currency: *settlement_currency,
                tier: *tier,
                fees: *fees,
                status: MerchantStatus::Active,
                onboarded_at: *onboarded_at,
            }),
            (None, _) => None,
            (Some(merchant), E::MerchantTierChanged { to, .. }) => Some(Merchant { tier: *to, ..merchant }),
            (Some(merchant), E::MerchantSuspended { .. }) => {
                Some(Merchant { status: MerchantStatus::Suspended, ..merchant })
            }
            (Some(merchant), E::MerchantReactivated { .. }) => {
                Some(Merchant { status: MerchantStatus::Active, ..merchant })
            }
            (Some(merchant), E::MerchantClosed { .. }) => Some(Merchant { status: MerchantStatus::Closed, ..merchant }),
        }
    }
}
