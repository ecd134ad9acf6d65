//! A compact binary encoding for stored values (payment summaries, journal chunks):
//! integers as zigzag varints, strings and enum names length-prefixed, instants as
//! seconds and nanoseconds. Enums are stored by their serde name (the same text as in
//! the JSON), so a variant's stored form never depends on declaration order.

use paystream_domain::time::Timestamp;
use paystream_domain::Currency;
use serde::de::value::{Error as ValueError, StrDeserializer};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::keys;

/// Appends values to a byte buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    pub(crate) out: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_capacity(capacity: usize) -> Writer {
        Writer { out: Vec::with_capacity(capacity) }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.out.push(v);
    }

    pub(crate) fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.out.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.out.push(v as u8);
    }

    pub(crate) fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u64(v.len() as u64);
        self.out.extend_from_slice(v);
    }

    pub(crate) fn str(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }

    pub(crate) fn opt_str(&mut self, v: Option<&str>) {
        match v {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }

    pub(crate) fn uuid(&mut self, v: &Uuid) {
        self.out.extend_from_slice(v.as_bytes());
    }

    pub(crate) fn currency(&mut self, v: Currency) {
        self.out.extend_from_slice(&keys::currency_key(v));
    }

    pub(crate) fn timestamp(&mut self, v: Timestamp) {
        let at = v.as_datetime();
        self.i64(at.unix_timestamp());
        self.u64(u64::from(at.nanosecond()));
    }

    /// A unit enum, by its serde name.
    pub(crate) fn name<T: Serialize>(&mut self, v: &T) {
        // A unit variant serializes to a JSON string `"name"`: written in place, then the
        // quotes dropped and the length put in front (names are shorter than 128 bytes).
        let start = self.out.len();
        self.out.push(0);
        if serde_json::to_writer(&mut self.out, v).is_err() {
            self.out.truncate(start);
            self.bytes(&[]);
            return;
        }
        let written = &self.out[start + 1..];
        match written.strip_prefix(b"\"").and_then(|t| t.strip_suffix(b"\"")) {
            Some(name) if name.len() < 0x80 => {
                let len = name.len();
                self.out.copy_within(start + 2..start + 2 + len, start + 1);
                self.out.truncate(start + 1 + len);
                self.out[start] = len as u8;
            }
            // Not a unit variant: kept as its JSON text (a bug the round-trip tests catch).
            _ => {
                let text = written.to_vec();
                self.out.truncate(start);
                self.bytes(&text);
            }
        }
    }

    pub(crate) fn opt_name<T: Serialize>(&mut self, v: Option<&T>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.name(v);
            }
        }
    }
}

/// Reads what [`Writer`] wrote; every method answers `None` on malformed input.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Some(head)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    pub(crate) fn i64(&mut self) -> Option<i64> {
        let v = self.u64()?;
        Some(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u64()?).ok()?;
        self.take(len)
    }

    pub(crate) fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.bytes()?).ok()
    }

    pub(crate) fn string(&mut self) -> Option<String> {
        self.str().map(str::to_string)
    }

    pub(crate) fn opt_string(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.string()?)),
            _ => None,
        }
    }

    pub(crate) fn uuid(&mut self) -> Option<Uuid> {
        keys::uuid_from(self.take(16)?)
    }

    /// 16 bytes as they are (no length prefix).
    pub(crate) fn array16(&mut self) -> Option<[u8; 16]> {
        self.take(16)?.try_into().ok()
    }

    pub(crate) fn currency(&mut self) -> Option<Currency> {
        keys::parse_currency(self.take(3)?)
    }

    pub(crate) fn timestamp(&mut self) -> Option<Timestamp> {
        let seconds = self.i64()?;
        let nanos = u32::try_from(self.u64()?).ok()?;
        let at = time::OffsetDateTime::from_unix_timestamp(seconds).ok()?.replace_nanosecond(nanos).ok()?;
        Some(Timestamp::from_datetime(at))
    }

    pub(crate) fn name<T: for<'de> Deserialize<'de>>(&mut self) -> Option<T> {
        let text = self.str()?;
        T::deserialize(StrDeserializer::<ValueError>::new(text)).ok()
    }

    pub(crate) fn opt_name<T: for<'de> Deserialize<'de>>(&mut self) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.name()?)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use paystream_domain::payment::{DeclineCode, PaymentStatus};

    #[test]
    fn values_round_trip() {
        let at = Timestamp::parse_rfc3339("2026-03-09T10:11:12.123456789Z").unwrap();
        let mut w = Writer::default();
        for v in [0i64, -1, 1, 63, -64, 64, i64::MAX, i64::MIN] {
            w.i64(v);
        }
        w.u64(u64::MAX);
        w.opt_str(Some("héllo"));
        w.opt_str(None);
        w.timestamp(at);
        w.name(&PaymentStatus::RequiresReview);
        w.opt_name(Some(&DeclineCode::InsufficientFunds));
        w.opt_name::<DeclineCode>(None);
        w.currency(Currency::ALL[0]);
        let mut r = Reader::new(&w.out);
        for v in [0i64, -1, 1, 63, -64, 64, i64::MAX, i64::MIN] {
            assert_eq!(r.i64(), Some(v));
        }
        assert_eq!(r.u64(), Some(u64::MAX));
        assert_eq!(r.opt_string(), Some(Some("héllo".to_string())));
        assert_eq!(r.opt_string(), Some(None));
        assert_eq!(r.timestamp(), Some(at));
        assert_eq!(r.name(), Some(PaymentStatus::RequiresReview));
        assert_eq!(r.opt_name(), Some(Some(DeclineCode::InsufficientFunds)));
        assert_eq!(r.opt_name::<DeclineCode>(), Some(None));
        assert_eq!(r.currency(), Some(Currency::ALL[0]));
        assert!(r.is_empty());
        assert_eq!(Reader::new(&[0x80]).u64(), None);
    }
}
