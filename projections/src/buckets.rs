//! Sorted maps of many small records, stored as few sled keys ("buckets").
//!
//! In sled a *new* key costs far more than rewriting a value (a leaf split and a copy
//! of its parent: 8-14 µs on the benchmark machine, see docs/performance.md), so a
//! model with one record per payment keeps its records in buckets of up to `cap`
//! members, sorted by a 16-byte member key.
//!
//! Layout under a key prefix `P`: a bucket is stored at `P ++ K`, where `K` is the
//! largest member key it holds. It holds the member keys in `(K', K]`, `K'` being the
//! key of the bucket before it under `P` (for the first bucket: from the start). So the
//! bucket of a member key `m` is the first bucket whose key is `>= P ++ m`: one range
//! lookup. A member beyond every bucket starts a new bucket; a bucket grown past `cap`
//! splits into two halves, the lower one under a new key (the largest it holds). A
//! bucket's key never changes and no key is removed. The layout depends only on the
//! sequence of inserts, so a rebuild lays out the same buckets, byte for byte, however
//! its writes are batched.
//!
//! Value: format byte, member count (varint), then per member its key (16 bytes), the
//! length of its payload (varint) and the payload; members in ascending key order.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use crate::codec::{Reader, Writer};
use crate::error::ProjectionError;
use crate::keys;
use crate::model::ProjectionName;

/// First byte of a stored bucket.
const BUCKET_FORMAT: u8 = 1;

/// A member key.
pub(crate) type MemberKey = [u8; 16];

/// A record kept in buckets.
pub(crate) trait Member: Sized {
    fn member_key(&self) -> MemberKey;
    fn encode_payload(&self, out: &mut Writer);
    fn decode_payload(key: &MemberKey, payload: &[u8]) -> Option<Self>;
}

fn encode_bucket<M: Member>(members: &[M]) -> Vec<u8> {
    let mut w = Writer::with_capacity(8 + members.len() * 64);
    w.u8(BUCKET_FORMAT);
    w.u64(members.len() as u64);
    let mut payload = Writer::with_capacity(256);
    for member in members {
        w.out.extend_from_slice(&member.member_key());
        payload.out.clear();
        member.encode_payload(&mut payload);
        w.bytes(&payload.out);
    }
    w.out
}

/// The members of a stored bucket as (key, payload), in key order.
fn raw_members(value: &[u8]) -> Option<Vec<(MemberKey, &[u8])>> {
    let mut r = Reader::new(value);
    if r.u8()? != BUCKET_FORMAT {
        return None;
    }
    let count = usize::try_from(r.u64()?).ok()?;
    let mut out = Vec::with_capacity(count.min(value.len() / 17));
    for _ in 0..count {
        let key = r.array16()?;
        out.push((key, r.bytes()?));
    }
    r.is_empty().then_some(out)
}

fn corrupt(projection: ProjectionName, key: &[u8], detail: &str) -> ProjectionError {
    ProjectionError::Corrupt { projection: projection.as_str(), key: format!("{key:?}"), detail: detail.into() }
}

fn decode_bucket<M: Member>(projection: ProjectionName, key: &[u8], value: &[u8]) -> Result<Vec<M>, ProjectionError> {
    raw_members(value)
        .and_then(|raw| raw.into_iter().map(|(k, payload)| M::decode_payload(&k, payload)).collect())
        .ok_or_else(|| corrupt(projection, key, "bucket does not parse"))
}

/// Whether `key` is a bucket key under `prefix`.
fn is_bucket_key(prefix: &[u8], key: &[u8]) -> bool {
    key.len() == prefix.len() + 16 && key.starts_with(prefix)
}

/// The member stored under `prefix` with key `member`, as its payload.
pub(crate) fn find<M: Member>(
    tree: &sled::Tree,
    projection: ProjectionName,
    prefix: &[u8],
    member: &MemberKey,
) -> Result<Option<M>, ProjectionError> {
    let probe = keys::key(&[prefix, member]);
    let Some((key, value)) = tree.range(probe..).next().transpose()? else { return Ok(None) };
    if !is_bucket_key(prefix, &key) {
        return Ok(None);
    }
    let raw = raw_members(&value).ok_or_else(|| corrupt(projection, &key, "bucket does not parse"))?;
    match raw.binary_search_by(|(k, _)| k.cmp(member)) {
        Ok(i) => M::decode_payload(member, raw[i].1).map(Some).ok_or_else(|| corrupt(projection, &key, "member")),
        Err(_) => Ok(None),
    }
}

/// Calls `visit` with the key and payload of each member under `prefix` whose key is
/// `>= from`, in ascending key order, until it answers `Break` or the members end.
pub(crate) fn scan<F>(
    tree: &sled::Tree,
    projection: ProjectionName,
    prefix: &[u8],
    from: &MemberKey,
    mut visit: F,
) -> Result<(), ProjectionError>
where
    F: FnMut(&MemberKey, &[u8]) -> Result<ControlFlow<()>, ProjectionError>,
{
    for item in tree.range(keys::key(&[prefix, from])..) {
        let (key, value) = item?;
        if !key.starts_with(prefix) {
            break;
        }
        if !is_bucket_key(prefix, &key) {
            return Err(corrupt(projection, &key, "not a bucket key"));
        }
        let raw = raw_members(&value).ok_or_else(|| corrupt(projection, &key, "bucket does not parse"))?;
        for (member, payload) in raw.iter().filter(|(k, _)| k >= from) {
            if visit(member, payload)?.is_break() {
                return Ok(());
            }
        }
    }
    Ok(())
}

struct Held<M> {
    members: Vec<M>,
    /// Changed since the last flush.
    dirty: bool,
}

/// Buckets read through from the tree and written back on [`BucketSet::flush`]: the
/// bucket counterpart of [`crate::model::Stage`], for one [`crate::model::WorkingSet`].
pub(crate) struct BucketSet<M: Member> {
    projection: ProjectionName,
    cap: usize,
    /// By full tree key.
    held: BTreeMap<Vec<u8>, Held<M>>,
    /// Every bucket of the tree is held (see `WorkingSet::assume_empty_tree`).
    complete: bool,
}

impl<M: Member> BucketSet<M> {
    pub(crate) fn new(projection: ProjectionName, cap: usize) -> Self {
        BucketSet { projection, cap: cap.max(2), held: BTreeMap::new(), complete: false }
    }

    /// The key of the bucket `member` belongs in (now held), if any bucket under
    /// `prefix` can hold it.
    fn locate(
        &mut self,
        tree: &sled::Tree,
        prefix: &[u8],
        member: &MemberKey,
    ) -> Result<Option<Vec<u8>>, ProjectionError> {
        let probe = keys::key(&[prefix, member]);
        let held = self.held.range(probe.clone()..).next().map(|(k, _)| k).filter(|k| is_bucket_key(prefix, k));
        let stored = match self.complete {
            true => None,
            false => tree.range(probe..).next().transpose()?.filter(|(k, _)| is_bucket_key(prefix, k)),
        };
        match (held, stored) {
            (Some(held), Some((stored, _))) if held.as_slice() <= stored.as_ref() => Ok(Some(held.clone())),
            (_, Some((stored, value))) => {
                let key = stored.to_vec();
                if !self.held.contains_key(&key) {
                    let members = decode_bucket(self.projection, &key, &value)?;
                    self.held.insert(key.clone(), Held { members, dirty: false });
                }
                Ok(Some(key))
            }
            (held, None) => Ok(held.cloned()),
        }
    }

    fn vanished(&self) -> ProjectionError {
        ProjectionError::Invariant {
            projection: self.projection.as_str(),
            position: 0,
            detail: "held bucket vanished".into(),
        }
    }

    /// Inserts `member`, replacing one with the same key.
    pub(crate) fn insert(&mut self, tree: &sled::Tree, prefix: &[u8], member: M) -> Result<(), ProjectionError> {
        let key = member.member_key();
        let Some(bucket_key) = self.locate(tree, prefix, &key)? else {
            self.held.insert(keys::key(&[prefix, &key]), Held { members: vec![member], dirty: true });
            return Ok(());
        };
        let vanished = self.vanished();
        let held = self.held.get_mut(&bucket_key).ok_or(vanished)?;
        held.dirty = true;
        match held.members.binary_search_by(|m| m.member_key().cmp(&key)) {
            Ok(i) => held.members[i] = member,
            Err(i) => held.members.insert(i, member),
        }
        if held.members.len() > self.cap {
            let upper = held.members.split_off(held.members.len() / 2);
            let lower = std::mem::replace(&mut held.members, upper);
            if let Some(last) = lower.last() {
                let lower_key = keys::key(&[prefix, &last.member_key()]);
                self.held.insert(lower_key, Held { members: lower, dirty: true });
            }
        }
        Ok(())
    }

    /// The member with key `member`, for reading.
    pub(crate) fn get(
        &mut self,
        tree: &sled::Tree,
        prefix: &[u8],
        member: &MemberKey,
    ) -> Result<Option<&M>, ProjectionError> {
        let Some(bucket_key) = self.locate(tree, prefix, member)? else { return Ok(None) };
        let vanished = self.vanished();
        let held = self.held.get(&bucket_key).ok_or(vanished)?;
        Ok(held.members.binary_search_by(|m| m.member_key().cmp(member)).ok().and_then(|i| held.members.get(i)))
    }

    /// The member with key `member`, for changing (its bucket is then written back).
    pub(crate) fn get_mut(
        &mut self,
        tree: &sled::Tree,
        prefix: &[u8],
        member: &MemberKey,
    ) -> Result<Option<&mut M>, ProjectionError> {
        let Some(bucket_key) = self.locate(tree, prefix, member)? else { return Ok(None) };
        let vanished = self.vanished();
        let held = self.held.get_mut(&bucket_key).ok_or(vanished)?;
        match held.members.binary_search_by(|m| m.member_key().cmp(member)) {
            Ok(i) => {
                held.dirty = true;
                Ok(held.members.get_mut(i))
            }
            Err(_) => Ok(None),
        }
    }

    /// Adds every bucket changed since the last flush to `batch`.
    pub(crate) fn flush(&mut self, batch: &mut sled::Batch) {
        for (key, held) in self.held.iter_mut().filter(|(_, held)| held.dirty) {
            batch.insert(key.as_slice(), encode_bucket(&held.members));
            held.dirty = false;
        }
    }

    /// Buckets held (each is one stored record of up to `cap` members).
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    /// Forgets the buckets not changed since the last flush.
    pub(crate) fn evict(&mut self) {
        self.complete = false;
        self.held.retain(|_, held| held.dirty);
    }

    /// See `WorkingSet::assume_empty_tree`.
    pub(crate) fn assume_empty_tree(&mut self) {
        self.complete = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A member: a key and a counter.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Counter(MemberKey, u64);

    impl Member for Counter {
        fn member_key(&self) -> MemberKey {
            self.0
        }
        fn encode_payload(&self, out: &mut Writer) {
            out.u64(self.1);
        }
        fn decode_payload(key: &MemberKey, payload: &[u8]) -> Option<Self> {
            let mut r = Reader::new(payload);
            let n = r.u64()?;
            r.is_empty().then_some(Counter(*key, n))
        }
    }

    const P: ProjectionName = ProjectionName::PaymentSearch;

    fn member_key(n: u16) -> MemberKey {
        let mut k = [0u8; 16];
        k[..2].copy_from_slice(&n.to_be_bytes());
        k
    }

    fn tree() -> sled::Tree {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.open_tree("t").unwrap()
    }

    /// How a run keeps its set between flushes.
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        /// A fresh set after each flush (reads everything back from the tree).
        Fresh,
        /// One set throughout, starting on an empty tree (a rebuild).
        Rebuild,
        /// One set starting on an empty tree that forgets its clean buckets after
        /// each flush (a rebuild past `MAX_WORKING_SET_RECORDS`).
        Evicting,
    }

    /// Applies `ops` (insert key, or bump key's counter when present) to a set,
    /// flushing to `tree` after every `flush_every` ops.
    fn run(tree: &sled::Tree, ops: &[(u16, bool)], flush_every: usize, mode: Mode, cap: usize) {
        let mut set: BucketSet<Counter> = BucketSet::new(P, cap);
        if mode != Mode::Fresh {
            set.assume_empty_tree();
        }
        for (i, (n, bump)) in ops.iter().enumerate() {
            let key = member_key(*n);
            let prefix: &[u8] = if n % 3 == 0 { b"a" } else { b"b" };
            match set.get_mut(tree, prefix, &key).unwrap() {
                Some(c) if *bump => c.1 += 1,
                Some(_) => {}
                None => set.insert(tree, prefix, Counter(key, 0)).unwrap(),
            }
            if (i + 1) % flush_every == 0 {
                let mut batch = sled::Batch::default();
                set.flush(&mut batch);
                tree.apply_batch(batch).unwrap();
                match mode {
                    Mode::Fresh => set = BucketSet::new(P, cap),
                    Mode::Evicting => set.evict(),
                    Mode::Rebuild => {}
                }
            }
        }
        let mut batch = sled::Batch::default();
        set.flush(&mut batch);
        tree.apply_batch(batch).unwrap();
    }

    fn dump(tree: &sled::Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
        tree.iter().map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap()).collect()
    }

    fn members(tree: &sled::Tree, prefix: &[u8]) -> Vec<Counter> {
        let mut out = Vec::new();
        scan(tree, P, prefix, &[0; 16], |k, payload| {
            out.push(Counter::decode_payload(k, payload).unwrap());
            Ok(ControlFlow::Continue(()))
        })
        .unwrap();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the order of inserts and however they are batched, the stored
        /// members are exactly the model's, in key order, every bucket holds at most
        /// `cap` and is keyed by its largest member, and the bytes stored do not depend
        /// on the batching.
        #[test]
        fn buckets_hold_a_sorted_map(ops in proptest::collection::vec((0u16..400, any::<bool>()), 1..600),
                                     flush_every in 1usize..50, cap in 2usize..12) {
            let mut model = std::collections::BTreeMap::new();
            for (n, bump) in &ops {
                match model.get_mut(n) {
                    Some(c) if *bump => *c += 1,
                    Some(_) => {}
                    None => { model.insert(*n, 0u64); }
                }
            }
            let live = tree();
            run(&live, &ops, flush_every, Mode::Fresh, cap);
            let rebuilt = tree();
            run(&rebuilt, &ops, 1_000_000, Mode::Rebuild, cap);
            prop_assert_eq!(dump(&live), dump(&rebuilt));
            let evicting = tree();
            run(&evicting, &ops, flush_every, Mode::Evicting, cap);
            prop_assert_eq!(dump(&live), dump(&evicting));
            for (prefix, rest) in [(b"a", 0u16), (b"b", 1)] {
                let want: Vec<Counter> = model.iter().filter(|(n, _)| (*n % 3 == 0) == (rest == 0))
                    .map(|(n, c)| Counter(member_key(*n), *c)).collect();
                prop_assert_eq!(members(&live, prefix), want.clone());
                for m in &want {
                    prop_assert_eq!(find::<Counter>(&live, P, prefix, &m.0).unwrap(), Some(m.clone()));
                }
            }
            for (key, value) in dump(&live) {
                let stored: Vec<Counter> = decode_bucket(P, &key, &value).unwrap();
                prop_assert!(!stored.is_empty() && stored.len() <= cap);
                prop_assert_eq!(&key[1..], &stored.last().unwrap().0[..]);
            }
        }
    }

    #[test]
    fn a_missing_member_is_none() {
        let t = tree();
        run(&t, &[(3, false), (9, false)], 1, Mode::Fresh, 4);
        assert_eq!(find::<Counter>(&t, P, b"a", &member_key(6)).unwrap(), None);
        assert_eq!(find::<Counter>(&t, P, b"a", &member_key(12)).unwrap(), None);
        assert_eq!(find::<Counter>(&t, P, b"b", &member_key(3)).unwrap(), None);
    }
}
