//! Money: an integer count of minor units bound to an ISO 4217 currency.
//!
//! There are no floats anywhere in this module. Arithmetic is checked: an
//! overflow or a mix of currencies is an error, never a wrap or a silent
//! conversion. `Money` deliberately has no `Default`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a money operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("currency mismatch: {left} and {right}")]
    CurrencyMismatch { left: Currency, right: Currency },
    #[error("amount overflow")]
    Overflow,
    #[error("unknown or unsupported currency {0:?}")]
    UnknownCurrency(String),
    #[error("invalid amount {input:?}: {reason}")]
    InvalidAmount { input: String, reason: &'static str },
}

macro_rules! currencies {
    ($($code:ident = $exp:literal, $name:literal;)*) => {
        /// An ISO 4217 currency this platform settles in. The exponent is the
        /// number of decimal digits of the minor unit (USD 2, JPY 0, KWD 3).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        pub enum Currency { $(#[doc = $name] $code,)* }

        impl Currency {
            /// Every supported currency, in code order.
            pub const ALL: &'static [Currency] = &[$(Currency::$code,)*];

            /// Decimal digits of the minor unit.
            pub const fn exponent(self) -> u32 {
                match self { $(Currency::$code => $exp,)* }
            }

            /// The three-letter ISO 4217 code.
            pub const fn code(self) -> &'static str {
                match self { $(Currency::$code => stringify!($code),)* }
            }
        }

        impl FromStr for Currency {
            type Err = MoneyError;
            /// Accepts the ISO code in upper or lower case ("USD", "usd").
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.to_ascii_uppercase().as_str() {
                    $(stringify!($code) => Ok(Currency::$code),)*
                    _ => Err(MoneyError::UnknownCurrency(s.to_string())),
                }
            }
        }
    };
}

currencies! {
    AUD = 2, "Australian dollar";
    BHD = 3, "Bahraini dinar";
    CAD = 2, "Canadian dollar";
    CHF = 2, "Swiss franc";
    CNY = 2, "Chinese yuan renminbi";
    EUR = 2, "Euro";
    GBP = 2, "Pound sterling";
    HKD = 2, "Hong Kong dollar";
    JPY = 0, "Japanese yen";
    KRW = 0, "South Korean won";
    KWD = 3, "Kuwaiti dinar";
    MOP = 2, "Macanese pataca";
    SGD = 2, "Singapore dollar";
    TWD = 2, "New Taiwan dollar";
    USD = 2, "United States dollar";
}

impl<'de> Deserialize<'de> for Currency {
    /// Accepts the ISO code in either case; always written upper case.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        code.parse().map_err(serde::de::Error::custom)
    }
}

impl Currency {
    /// 10^exponent: how many minor units make one major unit.
    pub const fn minor_per_major(self) -> i64 {
        10_i64.pow(self.exponent())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An amount of money: integer minor units and a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// The amount in minor units (cents for USD, yen for JPY, fils for KWD).
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub const fn new(amount_minor: i64, currency: Currency) -> Money {
        Money { amount_minor, currency }
    }

    pub const fn zero(currency: Currency) -> Money {
        Money { amount_minor: 0, currency }
    }

    /// Whole major units, checked: `Money::from_major(12, USD)` is 12.00 USD.
    pub fn from_major(major: i64, currency: Currency) -> Result<Money, MoneyError> {
        major
            .checked_mul(currency.minor_per_major())
            .map(|amount_minor| Money { amount_minor, currency })
            .ok_or(MoneyError::Overflow)
    }

    pub const fn is_positive(self) -> bool {
        self.amount_minor > 0
    }

    pub const fn is_negative(self) -> bool {
        self.amount_minor < 0
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch { left: self.currency, right: other.currency })
        }
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount_minor = self.amount_minor.checked_add(other.amount_minor).ok_or(MoneyError::Overflow)?;
        Ok(Money { amount_minor, ..self })
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount_minor = self.amount_minor.checked_sub(other.amount_minor).ok_or(MoneyError::Overflow)?;
        Ok(Money { amount_minor, ..self })
    }

    pub fn checked_neg(self) -> Result<Money, MoneyError> {
        let amount_minor = self.amount_minor.checked_neg().ok_or(MoneyError::Overflow)?;
        Ok(Money { amount_minor, ..self })
    }

    /// `self * bps / 10_000`, rounded half away from zero, computed in i128 so
    /// the intermediate product cannot overflow. Used for fees and rates.
    pub fn percent_bps(self, bps: u32) -> Result<Money, MoneyError> {
        let product = i128::from(self.amount_minor) * i128::from(bps);
        let half = 5_000_i128;
        let rounded = if product >= 0 { (product + half) / 10_000 } else { (product - half) / 10_000 };
        let amount_minor = i64::try_from(rounded).map_err(|_| MoneyError::Overflow)?;
        Ok(Money { amount_minor, ..self })
    }

    /// Parses "12.34 USD", "12 USD", "-0.50 EUR", "1.234 KWD". More decimal
    /// digits than the currency's exponent is an error (no rounding).
    pub fn parse(input: &str) -> Result<Money, MoneyError> {
        let invalid = |reason| MoneyError::InvalidAmount { input: input.to_string(), reason };
        let (number, code) = input.trim().split_once(' ').ok_or(invalid("expected \"<amount> <currency>\""))?;
        let currency: Currency = code.trim().parse()?;
        let (negative, digits) = match number.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, number),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let exponent = currency.exponent() as usize;
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("the whole part must be digits"));
        }
        if digits.contains('.') && (fraction.is_empty() || exponent == 0) {
            return Err(invalid("unexpected decimal point"));
        }
        if fraction.len() > exponent || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("too many decimal digits for the currency"));
        }
        let mut minor: i64 = 0;
        let padded = format!("{whole}{fraction:0<exponent$}");
        for b in padded.bytes() {
            minor =
                minor.checked_mul(10).and_then(|m| m.checked_add(i64::from(b - b'0'))).ok_or(MoneyError::Overflow)?;
        }
        let amount_minor = if negative { -minor } else { minor };
        Ok(Money { amount_minor, currency })
    }
}

impl fmt::Display for Money {
    /// "12.34 USD", "1234 JPY", "1.234 KWD", "-0.05 EUR".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exponent = self.currency.exponent();
        let sign = if self.amount_minor < 0 { "-" } else { "" };
        let abs = self.amount_minor.unsigned_abs();
        if exponent == 0 {
            return write!(f, "{sign}{abs} {}", self.currency);
        }
        let scale = 10_u64.pow(exponent);
        write!(f, "{sign}{}.{:0width$} {}", abs / scale, abs % scale, self.currency, width = exponent as usize)
    }
}

impl FromStr for Money {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Money::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exponents() {
        assert_eq!(Currency::USD.exponent(), 2);
        assert_eq!(Currency::CNY.exponent(), 2);
        assert_eq!(Currency::JPY.exponent(), 0);
        assert_eq!(Currency::KWD.exponent(), 3);
        assert_eq!(Currency::KWD.minor_per_major(), 1000);
    }

    #[test]
    fn display() {
        assert_eq!(Money::new(1234, Currency::USD).to_string(), "12.34 USD");
        assert_eq!(Money::new(5, Currency::EUR).to_string(), "0.05 EUR");
        assert_eq!(Money::new(-5, Currency::EUR).to_string(), "-0.05 EUR");
        assert_eq!(Money::new(1234, Currency::JPY).to_string(), "1234 JPY");
        assert_eq!(Money::new(1234, Currency::KWD).to_string(), "1.234 KWD");
        assert_eq!(Money::new(i64::MIN, Currency::JPY).to_string(), "-9223372036854775808 JPY");
    }

    #[test]
    fn parse() {
        assert_eq!(Money::parse("12.34 USD"), Ok(Money::new(1234, Currency::USD)));
        assert_eq!(Money::parse("12 usd"), Ok(Money::new(1200, Currency::USD)));
        assert_eq!(Money::parse("12.3 USD"), Ok(Money::new(1230, Currency::USD)));
        assert_eq!(Money::parse("-0.50 EUR"), Ok(Money::new(-50, Currency::EUR)));
        assert_eq!(Money::parse("1.234 KWD"), Ok(Money::new(1234, Currency::KWD)));
        assert_eq!(Money::parse("500 JPY"), Ok(Money::new(500, Currency::JPY)));
        assert!(Money::parse("12.345 USD").is_err());
        assert!(Money::parse("1.5 JPY").is_err());
        assert!(Money::parse("12. USD").is_err());
        assert!(Money::parse("abc USD").is_err());
        assert!(Money::parse("12.34").is_err());
        assert_eq!(Money::parse("1 XXX"), Err(MoneyError::UnknownCurrency("XXX".into())));
        assert_eq!(Money::parse("99999999999999999999 USD"), Err(MoneyError::Overflow));
    }

    #[test]
    fn checked_arithmetic() {
        let usd = |m| Money::new(m, Currency::USD);
        assert_eq!(usd(100).checked_add(usd(50)), Ok(usd(150)));
        assert_eq!(usd(100).checked_sub(usd(150)), Ok(usd(-50)));
        assert_eq!(usd(i64::MAX).checked_add(usd(1)), Err(MoneyError::Overflow));
        assert_eq!(usd(i64::MIN).checked_sub(usd(1)), Err(MoneyError::Overflow));
        assert_eq!(usd(i64::MIN).checked_neg(), Err(MoneyError::Overflow));
        assert_eq!(
            usd(1).checked_add(Money::new(1, Currency::EUR)),
            Err(MoneyError::CurrencyMismatch { left: Currency::USD, right: Currency::EUR })
        );
        assert_eq!(Money::from_major(i64::MAX, Currency::USD), Err(MoneyError::Overflow));
    }

    #[test]
    fn basis_points_round_half_away_from_zero() {
        let usd = |m| Money::new(m, Currency::USD);
        assert_eq!(usd(10_000).percent_bps(290), Ok(usd(290)));
        assert_eq!(usd(50).percent_bps(100), Ok(usd(1))); // 0.5 -> 1
        assert_eq!(usd(49).percent_bps(100), Ok(usd(0))); // 0.49 -> 0
        assert_eq!(usd(-50).percent_bps(100), Ok(usd(-1)));
        assert_eq!(usd(i64::MAX).percent_bps(10_000), Ok(usd(i64::MAX)));
        assert_eq!(usd(i64::MAX).percent_bps(20_000), Err(MoneyError::Overflow));
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(amount in any::<i64>().prop_filter("not MIN", |a| *a != i64::MIN), idx in 0..Currency::ALL.len()) {
            let money = Money::new(amount, Currency::ALL[idx]);
            prop_assert_eq!(Money::parse(&money.to_string()), Ok(money));
        }
    }
}
