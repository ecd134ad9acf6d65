//! Looking for card numbers in bytes: data files and captured logs.

use std::path::{Path, PathBuf};

use crate::fixtures::luhn_valid;

/// A card number found somewhere it must never be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub location: String,
    pub offset: usize,
    pub text: String,
}

/// Every run of 13 to 19 ASCII digits in `bytes` that passes the Luhn check.
///
/// A run inside a hexadecimal token (a hash, a fingerprint, a UUID: the
/// digits touch `a-f`/`A-F` characters of the same token) is not a card
/// number and is skipped; otherwise 1 in 10 random digit runs in hashes
/// would pass Luhn by chance. Known card numbers are also looked for
/// by [`find_cards`], which has no such exception.
pub fn luhn_runs(location: &str, bytes: &[u8]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let end = i;
        if !(13..=19).contains(&(end - start)) || in_hex_token(bytes, start, end) {
            continue;
        }
        let digits = std::str::from_utf8(&bytes[start..end]).unwrap_or_default();
        if luhn_valid(digits) {
            findings.push(Finding { location: location.to_string(), offset: start, text: digits.to_string() });
        }
    }
    findings
}

fn in_hex_token(bytes: &[u8], start: usize, end: usize) -> bool {
    let left = bytes[..start].iter().rev().take_while(|b| b.is_ascii_hexdigit());
    let right = bytes[end..].iter().take_while(|b| b.is_ascii_hexdigit());
    left.chain(right).any(|b| b.is_ascii_alphabetic())
}

/// Every place one of the known card numbers `cards` appears, however it
/// is typed: digits may be separated by spaces or dashes. One pass over the
/// bytes (data files are preallocated and large), looking at runs of
/// digits, spaces and dashes.
pub fn find_cards(location: &str, bytes: &[u8], cards: &[String]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b' ' || bytes[i] == b'-') {
            i += 1;
        }
        let digits: String = bytes[start..i].iter().filter(|b| b.is_ascii_digit()).map(|&b| char::from(b)).collect();
        if digits.len() < 12 {
            continue;
        }
        for card in cards.iter().filter(|card| digits.contains(card.as_str())) {
            findings.push(Finding { location: location.to_string(), offset: start, text: card.clone() });
        }
    }
    findings
}

/// The ways a person may type `number`: plain, in groups of four separated
/// by spaces or dashes.
pub fn spellings(number: &str) -> Vec<String> {
    let groups: Vec<String> =
        number.as_bytes().chunks(4).map(|chunk| String::from_utf8_lossy(chunk).into_owned()).collect();
    vec![number.to_string(), groups.join(" "), groups.join("-")]
}

/// Every regular file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display())) {
            let path = entry.expect("dir entry").path();
            let kind = std::fs::symlink_metadata(&path).expect("metadata").file_type();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
