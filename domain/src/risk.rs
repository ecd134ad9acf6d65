//! Risk rules: a pure score from the payment and facts the write side
//! gathered beforehand (velocity counts). Each fired rule adds points; the
//! total decides approve / review / decline.

use serde::{Deserialize, Serialize};

use crate::country::CountryCode;
use crate::merchant::Tier;
use crate::money::Money;

/// Facts about recent history, counted by the write side before deciding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskSignals {
    /// Earlier payments with the same instrument in the last hour.
    pub instrument_attempts_last_hour: u32,
    /// Earlier declined payments with the same instrument in the last 24 hours.
    pub instrument_declines_last_day: u32,
    /// Earlier payments by the same customer id in the last hour.
    pub customer_attempts_last_hour: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RiskDecision {
    Approve,
    Review,
    Decline,
}

/// The rules that can fire, with their points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RiskRule {
    /// The amount is above half of the tier's single-payment limit.
    AmountNearTierLimit,
    /// The instrument was used 5 or more times in the last hour.
    InstrumentVelocity,
    /// The instrument was declined 3 or more times in the last day.
    RepeatedDeclines,
    /// The customer paid 10 or more times in the last hour.
    CustomerVelocity,
    /// The customer's country differs from the merchant's.
    CrossBorder,
    /// The merchant is in tier D.
    HighRiskTier,
    /// No customer IP address was given.
    MissingCustomerIp,
}

impl RiskRule {
    pub const fn points(self) -> u8 {
        match self {
            RiskRule::AmountNearTierLimit => 55,
            RiskRule::InstrumentVelocity => 50,
            RiskRule::RepeatedDeclines => 40,
            RiskRule::CustomerVelocity => 30,
            RiskRule::CrossBorder => 10,
            RiskRule::HighRiskTier => 10,
            RiskRule::MissingCustomerIp => 5,
        }
    }
}

/// Score at or above which a payment is held for manual review.
pub const REVIEW_THRESHOLD: u8 = 50;
/// Score at or above which a payment is declined outright.
pub const DECLINE_THRESHOLD: u8 = 80;
/// Velocity thresholds (counts of earlier attempts).
pub const INSTRUMENT_VELOCITY_LIMIT: u32 = 5;
pub const REPEATED_DECLINES_LIMIT: u32 = 3;
pub const CUSTOMER_VELOCITY_LIMIT: u32 = 10;

/// Everything the rules look at.
#[derive(Debug, Clone, Copy)]
pub struct RiskInput {
    pub amount: Money,
    pub tier: Tier,
    pub merchant_country: CountryCode,
    pub customer_country: Option<CountryCode>,
    pub customer_ip_present: bool,
    pub signals: RiskSignals,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskAssessment {
    /// 0 to 100.
    pub score: u8,
    pub decision: RiskDecision,
    pub rules: Vec<RiskRule>,
}

pub fn assess(input: &RiskInput) -> RiskAssessment {
    let mut rules = Vec::new();
    // Half the tier limit, in minor units; i128 so the product cannot overflow.
    let limit_minor =
        i128::from(input.tier.limits().max_single_payment_major) * i128::from(input.amount.currency.minor_per_major());
    if i128::from(input.amount.amount_minor) * 2 > limit_minor {
        rules.push(RiskRule::AmountNearTierLimit);
    }
    if input.signals.instrument_attempts_last_hour >= INSTRUMENT_VELOCITY_LIMIT {
        rules.push(RiskRule::InstrumentVelocity);
    }
    if input.signals.instrument_declines_last_day >= REPEATED_DECLINES_LIMIT {
        rules.push(RiskRule::RepeatedDeclines);
    }
    if input.signals.customer_attempts_last_hour >= CUSTOMER_VELOCITY_LIMIT {
        rules.push(RiskRule::CustomerVelocity);
    }
    if input.customer_country.is_some_and(|c| c != input.merchant_country) {
        rules.push(RiskRule::CrossBorder);
    }
    if input.tier == Tier::D {
        rules.push(RiskRule::HighRiskTier);
    }
    if !input.customer_ip_present {
        rules.push(RiskRule::MissingCustomerIp);
    }
    let total: u32 = rules.iter().map(|r| u32::from(r.points())).sum();
    let score = u8::try_from(total.min(100)).unwrap_or(100);
    let decision = if score >= DECLINE_THRESHOLD {
        RiskDecision::Decline
    } else if score >= REVIEW_THRESHOLD {
        RiskDecision::Review
    } else {
        RiskDecision::Approve
    };
    RiskAssessment { score, decision, rules }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Currency;

    fn input(amount_minor: i64, tier: Tier) -> RiskInput {
        RiskInput {
            amount: Money::new(amount_minor, Currency::USD),
            tier,
            merchant_country: "US".parse().unwrap(),
            customer_country: Some("US".parse().unwrap()),
            customer_ip_present: true,
            signals: RiskSignals::default(),
        }
    }

    #[test]
    fn clean_payment_is_approved_with_no_rules() {
        assert_eq!(
            assess(&input(1_000, Tier::A)),
            RiskAssessment { score: 0, decision: RiskDecision::Approve, rules: vec![] }
        );
    }

    #[test]
    fn large_amount_goes_to_review() {
        // Tier D single limit is 1,000.00 USD; 600.00 is above half of it.
        let a = assess(&input(60_000, Tier::D));
        assert_eq!(a.rules, vec![RiskRule::AmountNearTierLimit, RiskRule::HighRiskTier]);
        assert_eq!((a.score, a.decision), (65, RiskDecision::Review));
    }

    #[test]
    fn velocity_and_large_amount_decline() {
        let mut i = input(60_000, Tier::D);
        i.signals.instrument_attempts_last_hour = 5;
        let a = assess(&i);
        assert_eq!(a.decision, RiskDecision::Decline);
        assert_eq!(a.score, 100);
    }

    #[test]
    fn soft_signals_add_up() {
        let mut i = input(1_000, Tier::B);
        i.customer_country = Some("CN".parse().unwrap());
        i.customer_ip_present = false;
        i.signals.instrument_declines_last_day = 3;
        let a = assess(&i);
        assert_eq!(a.rules, vec![RiskRule::RepeatedDeclines, RiskRule::CrossBorder, RiskRule::MissingCustomerIp]);
        assert_eq!((a.score, a.decision), (55, RiskDecision::Review));
        i.signals.customer_attempts_last_hour = 10;
        assert_eq!(assess(&i).decision, RiskDecision::Decline);
    }
}
