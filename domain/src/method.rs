//! Payment methods: what a customer pays with.
//!
//! Two sides: the *instrument* a command carries (it may hold a full card
//! number and CVC, in masked types that cannot be serialized or printed) and
//! the *summary* an event keeps (brand, last four digits, expiry and a keyed
//! fingerprint — never the number or the CVC).

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::Sha256;

use crate::error::DomainError;
use crate::merchant::validate_text;
use crate::time::Timestamp;

/// A full card number (PAN). `Debug` shows only the last four digits; there
/// is no `Display` and no `Serialize`, so it cannot reach a log or an event.
#[derive(Clone, PartialEq, Eq)]
pub struct CardNumber(String);

impl CardNumber {
    /// Keeps the digits of `raw`, dropping spaces and dashes people type.
    pub fn new(raw: &str) -> CardNumber {
        CardNumber(raw.chars().filter(|c| !matches!(c, ' ' | '-')).collect())
    }

    /// The digits, for the acquirer connector only.
    pub fn expose_digits(&self) -> &str {
        &self.0
    }

    pub fn last4(&self) -> String {
        let digits = self.0.as_str();
        digits[digits.len().saturating_sub(4)..].to_string()
    }

    /// 12 to 19 ASCII digits passing the Luhn check.
    pub fn is_valid(&self) -> bool {
        (12..=19).contains(&self.0.len()) && self.0.bytes().all(|b| b.is_ascii_digit()) && luhn_valid(&self.0)
    }

    pub fn brand(&self) -> CardBrand {
        CardBrand::detect(&self.0)
    }
}

impl fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CardNumber(****{})", self.last4())
    }
}

impl<'de> Deserialize<'de> for CardNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|raw| CardNumber::new(&raw))
    }
}

/// A card security code. Never printed, never serialized.
#[derive(Clone, PartialEq, Eq)]
pub struct Cvc(String);

impl Cvc {
    pub fn new(raw: &str) -> Cvc {
        Cvc(raw.to_string())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    fn is_valid(&self) -> bool {
        (3..=4).contains(&self.0.len()) && self.0.bytes().all(|b| b.is_ascii_digit())
    }
}

impl fmt::Debug for Cvc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cvc(***)")
    }
}

impl<'de> Deserialize<'de> for Cvc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Cvc)
    }
}

/// The Luhn (mod 10) check digit test.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0_u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        if !b.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CardBrand {
    Visa,
    Mastercard,
    Amex,
    Unionpay,
    Jcb,
    Discover,
    DinersClub,
    Unknown,
}

impl CardBrand {
    /// The brand from the number's leading digits (its IIN range).
    pub fn detect(digits: &str) -> CardBrand {
        let prefix = |n: usize| digits.get(..n).and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
        match (prefix(1), prefix(2), prefix(3), prefix(4)) {
            (4, ..) => CardBrand::Visa,
            (_, 34 | 37, ..) => CardBrand::Amex,
            (_, 51..=55, ..) | (.., 2221..=2720) => CardBrand::Mastercard,
            (_, 62, ..) | (_, 81, ..) => CardBrand::Unionpay,
            (.., 3528..=3589) => CardBrand::Jcb,
            (.., 6011) | (_, 65, ..) | (_, _, 644..=649, _) => CardBrand::Discover,
            (_, 36 | 38 | 39, ..) | (_, _, 300..=305, _) => CardBrand::DinersClub,
            _ => CardBrand::Unknown,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum WalletProvider {
    Alipay,
    WechatPay,
    UnionpayQuickpass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum QrScheme {
    Alipay,
    WechatPay,
    Unionpay,
    Emvco,
}

/// Card details as they arrive with a command.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CardInput {
    /// 12 to 19 digits (spaces and dashes between them allowed), passing the Luhn check.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub number: CardNumber,
    pub exp_month: u8,
    pub exp_year: u16,
    /// 3 or 4 digits.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub cvc: Cvc,
}

/// The instrument a payment command carries. Deserialize-only: it can come
/// in from a request but can never be written out. The JSON form is
/// `{"type": "card", "card": {...}}` (likewise for each type).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "MethodJson")]
pub enum PaymentMethodInput {
    Card { card: CardInput },
    BankTransfer { bank_transfer: BankTransferInput },
    Wallet { wallet: WalletInput },
    QrCode { qr_code: QrCodeInput },
    Nfc { nfc: NfcInput },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum MethodType {
    Card,
    BankTransfer,
    Wallet,
    QrCode,
    Nfc,
}

/// The wire form: a plain struct, so a parse error names the exact field
/// (`method.card.number`), which a tagged enum would lose.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodJson {
    #[serde(rename = "type")]
    kind: MethodType,
    card: Option<CardInput>,
    bank_transfer: Option<BankTransferInput>,
    wallet: Option<WalletInput>,
    qr_code: Option<QrCodeInput>,
    nfc: Option<NfcInput>,
}

impl TryFrom<MethodJson> for PaymentMethodInput {
    type Error = &'static str;
    fn try_from(m: MethodJson) -> Result<Self, Self::Error> {
        let others =
            [m.card.is_some(), m.bank_transfer.is_some(), m.wallet.is_some(), m.qr_code.is_some(), m.nfc.is_some()]
                .iter()
                .filter(|present| **present)
                .count();
        if others > 1 {
            return Err("give exactly one of card, bank_transfer, wallet, qr_code, nfc, matching type");
        }
        let missing = "the object named by type is missing (e.g. type card needs a card object)";
        Ok(match m.kind {
            MethodType::Card => PaymentMethodInput::Card { card: m.card.ok_or(missing)? },
            MethodType::BankTransfer => {
                PaymentMethodInput::BankTransfer { bank_transfer: m.bank_transfer.ok_or(missing)? }
            }
            MethodType::Wallet => PaymentMethodInput::Wallet { wallet: m.wallet.ok_or(missing)? },
            MethodType::QrCode => PaymentMethodInput::QrCode { qr_code: m.qr_code.ok_or(missing)? },
            MethodType::Nfc => PaymentMethodInput::Nfc { nfc: m.nfc.ok_or(missing)? },
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BankTransferInput {
    pub bank_code: String,
    pub account_holder: String,
    pub account_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WalletInput {
    pub provider: WalletProvider,
    pub account_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QrCodeInput {
    pub scheme: QrScheme,
    pub payer_id: String,
}

/// An NFC device token (a tokenised card on a phone or watch). Masked.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceToken(String);

impl DeviceToken {
    pub fn new(raw: &str) -> DeviceToken {
        DeviceToken(raw.to_string())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeviceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DeviceToken(***)")
    }
}

impl<'de> Deserialize<'de> for DeviceToken {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(DeviceToken)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NfcInput {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub device_token: DeviceToken,
}

/// What the log keeps about the instrument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum MethodSummary {
    Card {
        brand: CardBrand,
        last4: String,
        exp_month: u8,
        exp_year: u16,
        /// HMAC-SHA256 of the number under the platform's fingerprint key.
        fingerprint: String,
    },
    BankTransfer {
        bank_code: String,
        account_holder: String,
        account_last4: String,
    },
    Wallet {
        provider: WalletProvider,
        account_id: String,
    },
    QrCode {
        scheme: QrScheme,
        payer_id: String,
    },
    Nfc {
        token_last4: String,
        fingerprint: String,
    },
}

impl MethodSummary {
    /// The method's type name as used in the API (`card`, `wallet`, ...).
    pub fn type_name(&self) -> &'static str {
        match self {
            MethodSummary::Card { .. } => "card",
            MethodSummary::BankTransfer { .. } => "bank_transfer",
            MethodSummary::Wallet { .. } => "wallet",
            MethodSummary::QrCode { .. } => "qr_code",
            MethodSummary::Nfc { .. } => "nfc",
        }
    }

    /// A stable identity of "the same instrument" for velocity rules.
    pub fn instrument_key(&self) -> String {
        match self {
            MethodSummary::Card { fingerprint, .. } | MethodSummary::Nfc { fingerprint, .. } => fingerprint.clone(),
            MethodSummary::BankTransfer { bank_code, account_holder, account_last4 } => {
                format!("bank:{bank_code}:{account_holder}:{account_last4}")
            }
            MethodSummary::Wallet { provider, account_id } => format!("wallet:{provider:?}:{account_id}"),
            MethodSummary::QrCode { scheme, payer_id } => format!("qr:{scheme:?}:{payer_id}"),
        }
    }
}

/// Longest wallet account id, payer id, bank code, holder or token accepted.
pub const MAX_ACCOUNT_ID_CHARS: usize = 128;

fn last4(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    chars[chars.len().saturating_sub(4)..].iter().collect()
}

/// Keyed fingerprint: hex of the first 16 bytes of HMAC-SHA256(key, value).
pub fn fingerprint(key: &[u8], value: &str) -> String {
    // HMAC accepts keys of any length, so this never fails in practice.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(value.as_bytes());
            hex::encode(&mac.finalize().into_bytes()[..16])
        }
        Err(_) => String::new(),
    }
}

impl PaymentMethodInput {
    /// Validates the instrument and returns what the log may keep.
    /// `now` decides whether a card has expired (valid through the end of
    /// its expiry month, UTC).
    pub fn summarize(&self, now: Timestamp, fingerprint_key: &[u8]) -> Result<MethodSummary, DomainError> {
        match self {
            PaymentMethodInput::Card { card } => {
                if !card.number.is_valid() {
                    return Err(DomainError::InvalidCardNumber);
                }
                if !(1..=12).contains(&card.exp_month) {
                    return Err(DomainError::InvalidExpiryMonth);
                }
                let today = now.utc_date();
                let (year, month) = (i32::from(card.exp_year), card.exp_month);
                if (year, month) < (today.year(), u8::from(today.month())) {
                    return Err(DomainError::CardExpired);
                }
                if !card.cvc.is_valid() {
                    return Err(DomainError::InvalidCvc);
                }
                Ok(MethodSummary::Card {
                    brand: card.number.brand(),
                    last4: card.number.last4(),
                    exp_month: card.exp_month,
                    exp_year: card.exp_year,
                    fingerprint: fingerprint(fingerprint_key, card.number.expose_digits()),
                })
            }
            PaymentMethodInput::BankTransfer { bank_transfer: b } => {
                validate_id("method.bank_transfer.bank_code", &b.bank_code)?;
                validate_text("method.bank_transfer.account_holder", &b.account_holder, MAX_ACCOUNT_ID_CHARS, true)?;
                validate_id("method.bank_transfer.account_id", &b.account_id)?;
                Ok(MethodSummary::BankTransfer {
                    bank_code: b.bank_code.clone(),
                    account_holder: b.account_holder.trim().to_string(),
                    account_last4: last4(&b.account_id),
                })
            }
            PaymentMethodInput::Wallet { wallet } => {
                validate_id("method.wallet.account_id", &wallet.account_id)?;
                Ok(MethodSummary::Wallet { provider: wallet.provider, account_id: wallet.account_id.clone() })
            }
            PaymentMethodInput::QrCode { qr_code } => {
                validate_id("method.qr_code.payer_id", &qr_code.payer_id)?;
                Ok(MethodSummary::QrCode { scheme: qr_code.scheme, payer_id: qr_code.payer_id.clone() })
            }
            PaymentMethodInput::Nfc { nfc } => {
                let token = nfc.device_token.expose();
                validate_id("method.nfc.device_token", token)?;
                if token.len() < 8 {
                    return Err(DomainError::InvalidField {
                        param: "method.nfc.device_token",
                        reason: "must be at least 8 characters",
                    });
                }
                Ok(MethodSummary::Nfc { token_last4: last4(token), fingerprint: fingerprint(fingerprint_key, token) })
            }
        }
    }
}

/// An identifier-like field: non-empty, bounded, printable ASCII, no spaces.
fn validate_id(param: &'static str, value: &str) -> Result<(), DomainError> {
    if value.is_empty() {
        return Err(DomainError::InvalidField { param, reason: "must not be empty" });
    }
    if value.len() > MAX_ACCOUNT_ID_CHARS {
        return Err(DomainError::InvalidField { param, reason: "is too long" });
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(DomainError::InvalidField { param, reason: "must be printable ASCII without spaces" });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn() {
        for valid in ["4242424242424242", "5555555555554444", "6200000000000005", "4000000000000002", "378282246310005"]
        {
            assert!(luhn_valid(valid), "{valid}");
        }
        assert!(!luhn_valid("4242424242424241"));
        assert!(!luhn_valid(""));
        assert!(!luhn_valid("42a2"));
    }

    #[test]
    fn brands() {
        assert_eq!(CardBrand::detect("4242424242424242"), CardBrand::Visa);
        assert_eq!(CardBrand::detect("5555555555554444"), CardBrand::Mastercard);
        assert_eq!(CardBrand::detect("2223003122003222"), CardBrand::Mastercard);
        assert_eq!(CardBrand::detect("6200000000000005"), CardBrand::Unionpay);
        assert_eq!(CardBrand::detect("378282246310005"), CardBrand::Amex);
        assert_eq!(CardBrand::detect("3530111333300000"), CardBrand::Jcb);
        assert_eq!(CardBrand::detect("6011111111111117"), CardBrand::Discover);
        assert_eq!(CardBrand::detect("30569309025904"), CardBrand::DinersClub);
        assert_eq!(CardBrand::detect("9999999999999995"), CardBrand::Unknown);
    }

    #[test]
    fn card_number_is_masked_in_debug() {
        let number = CardNumber::new("4242 4242 4242 4242");
        assert_eq!(format!("{number:?}"), "CardNumber(****4242)");
        assert_eq!(format!("{:?}", Cvc::new("123")), "Cvc(***)");
        assert_eq!(number.expose_digits(), "4242424242424242");
    }

    #[test]
    fn fingerprint_is_keyed_and_stable() {
        let a = fingerprint(b"key-1", "4242424242424242");
        assert_eq!(a, fingerprint(b"key-1", "4242424242424242"));
        assert_ne!(a, fingerprint(b"key-2", "4242424242424242"));
        assert_eq!(a.len(), 32);
        assert!(!a.contains("4242"));
    }
}
