//! Identifiers: UUIDv7 newtypes printed with a type prefix (`pay_0190...`).
//!
//! The domain never generates ids itself (generation reads the clock); the
//! write side creates them with `Uuid::now_v7()` and passes them in commands.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// An id string that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} id {input:?}: expected {prefix}_ followed by 32 hex digits")]
pub struct IdError {
    pub kind: &'static str,
    pub prefix: &'static str,
    pub input: String,
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub const fn from_uuid(uuid: Uuid) -> Self {
                $name(uuid)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}_{}", $prefix, self.0.simple())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let error = || IdError { kind: stringify!($name), prefix: $prefix, input: s.chars().take(80).collect() };
                let rest = s.strip_prefix(concat!($prefix, "_")).ok_or_else(error)?;
                if rest.len() != 32 {
                    return Err(error());
                }
                Uuid::try_parse(rest).map($name).map_err(|_| error())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

prefixed_id!(/// A merchant (`mer_...`).
    MerchantId, "mer");
prefixed_id!(/// A payment (`pay_...`).
    PaymentId, "pay");
prefixed_id!(/// One capture of a payment (`cap_...`).
    CaptureId, "cap");
prefixed_id!(/// One refund of a payment (`re_...`).
    RefundId, "re");
prefixed_id!(/// A dispute (chargeback) on a payment (`dp_...`).
    DisputeId, "dp");
prefixed_id!(/// A settlement batch (`bat_...`).
    BatchId, "bat");
prefixed_id!(/// A payout to a merchant's settlement account (`po_...`).
    PayoutId, "po");
prefixed_id!(/// An API key (`key_...`); the secret itself is never this id.
    ApiKeyId, "key");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_has_prefix_and_round_trips() {
        let uuid = Uuid::from_u128(0x0190_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b);
        let id = PaymentId::from_uuid(uuid);
        assert_eq!(id.to_string(), "pay_0190a1b2c3d47e5f8a9b0c1d2e3f4a5b");
        assert_eq!(id.to_string().parse::<PaymentId>(), Ok(id));
        assert_eq!(serde_json::to_string(&id).ok(), Some("\"pay_0190a1b2c3d47e5f8a9b0c1d2e3f4a5b\"".to_string()));
        assert_eq!(serde_json::from_str::<PaymentId>("\"pay_0190a1b2c3d47e5f8a9b0c1d2e3f4a5b\"").ok(), Some(id));
        assert_eq!(RefundId::from_uuid(uuid).to_string(), "re_0190a1b2c3d47e5f8a9b0c1d2e3f4a5b");
        assert_eq!(DisputeId::from_uuid(uuid).to_string(), "dp_0190a1b2c3d47e5f8a9b0c1d2e3f4a5b");
        assert_eq!(MerchantId::from_uuid(uuid).to_string(), "mer_0190a1b2c3d47e5f8a9b0c1d2e3f4a5b");
    }

    #[test]
    fn rejects_wrong_prefix_and_garbage() {
        assert!("mer_0190a1b2c3d47e5f8a9b0c1d2e3f4a5b".parse::<PaymentId>().is_err());
        assert!("pay_xyz".parse::<PaymentId>().is_err());
        assert!("pay_0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".parse::<PaymentId>().is_err());
        assert!("".parse::<PaymentId>().is_err());
        assert!(serde_json::from_str::<PaymentId>("\"nope\"").is_err());
    }
}
