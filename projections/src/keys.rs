//! Byte encodings of keys, chosen so that sled's key order is the order queries need.

use paystream_domain::Currency;
use uuid::Uuid;

use crate::error::ProjectionError;

/// Key of the checkpoint inside every projection tree. Data keys start with a
/// lower-case letter, so the checkpoint sorts first and never collides.
pub const CHECKPOINT_KEY: &[u8] = b"\x00checkpoint";

pub fn checkpoint_value(position: u64) -> [u8; 8] {
    position.to_be_bytes()
}

pub fn parse_checkpoint(bytes: Option<&[u8]>) -> Result<u64, ProjectionError> {
    match bytes {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes).map(u64::from_be_bytes).map_err(|_| ProjectionError::Corrupt {
            projection: "checkpoint",
            key: "checkpoint".into(),
            detail: format!("{} bytes, expected 8", bytes.len()),
        }),
    }
}

/// `YYYY-MM-DD`: 10 ASCII bytes that sort like the dates (years 0..=9999).
pub fn date_key(date: time::Date) -> [u8; 10] {
    let mut out = *b"0000-00-00";
    let year = u32::try_from(date.year().clamp(0, 9999)).unwrap_or(0);
    let digits = |out: &mut [u8], mut value: u32| {
        for slot in out.iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    digits(&mut out[0..4], year);
    digits(&mut out[5..7], u32::from(u8::from(date.month())));
    digits(&mut out[8..10], u32::from(date.day()));
    out
}

pub fn parse_date(bytes: &[u8]) -> Option<time::Date> {
    let text = std::str::from_utf8(bytes).ok()?;
    let year: i32 = text.get(0..4)?.parse().ok()?;
    let month: u8 = text.get(5..7)?.parse().ok()?;
    let day: u8 = text.get(8..10)?.parse().ok()?;
    time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()
}

pub fn currency_key(currency: Currency) -> [u8; 3] {
    let mut out = [0u8; 3];
    out.copy_from_slice(&currency.code().as_bytes()[..3]);
    out
}

pub fn parse_currency(bytes: &[u8]) -> Option<Currency> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// A uuid's bytes inverted, so that a larger id sorts first (ties broken newest first).
pub fn uuid_desc(uuid: &Uuid) -> [u8; 16] {
    let mut out = *uuid.as_bytes();
    for b in &mut out {
        *b = !*b;
    }
    out
}

pub fn uuid_from_desc(bytes: &[u8]) -> Option<Uuid> {
    let mut raw: [u8; 16] = bytes.try_into().ok()?;
    for b in &mut raw {
        *b = !*b;
    }
    Some(Uuid::from_bytes(raw))
}

pub fn uuid_from(bytes: &[u8]) -> Option<Uuid> {
    Some(Uuid::from_bytes(bytes.try_into().ok()?))
}

/// `prefix ++ parts`, for building keys.
pub fn key(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// The smallest key greater than every key starting with `prefix` (for range ends).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_sort() {
        let d = time::macros::date!(2026 - 03 - 09);
        assert_eq!(&date_key(d), b"2026-03-09");
        assert_eq!(parse_date(&date_key(d)), Some(d));
        assert!(date_key(d) < date_key(time::macros::date!(2026 - 10 - 01)));
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"ab"), b"ac".to_vec());
        assert_eq!(prefix_end(&[1, 255]), vec![2]);
    }

    #[test]
    fn uuid_desc_round_trips() {
        let id = Uuid::from_u128(0x0190_a1b2_c3d4_7e5f_8a9b_0c1d_2e3f_4a5b);
        assert_eq!(uuid_from_desc(&uuid_desc(&id)), Some(id));
    }
}
