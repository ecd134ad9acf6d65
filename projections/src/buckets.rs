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

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

use crate::codec::{Reader, Writer};
use crate::error::ProjectionError;
use crate::keys;
use crate::model::{heap_block, ProjectionName};

/// First byte of a stored bucket.
const BUCKET_FORMAT: u8 = 1;

/// A member key.
pub(crate) type MemberKey = [u8; 16];

/// A record kept in buckets.
pub(crate) trait Member: Sized {
    fn member_key(&self) -> MemberKey;
    fn encode_payload(&self, out: &mut Writer);
    fn decode_payload(key: &MemberKey, payload: &[u8]) -> Option<Self>;

    /// Estimated bytes the member owns on the heap (beyond `size_of::<Self>()`), for
    /// `WorkingSet::bytes`.
    fn heap_bytes(&self) -> usize {
        0
    }
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
    /// Sum of the members' `heap_bytes`.
    heap: usize,
    /// Estimated bytes of the whole bucket (see [`Held::estimate`]).
    bytes: usize,
}

impl<M: Member> Held<M> {
    fn new(key_len: usize, members: Vec<M>, dirty: bool) -> Held<M> {
        let heap = members.iter().map(Member::heap_bytes).sum();
        let mut held = Held { members, dirty, heap, bytes: 0 };
        held.bytes = held.estimate(key_len);
        held
    }

    /// Estimated bytes: its slot in the B-tree (counted 1.5 times: nodes are between
    /// half and wholly full), the key's buffer, the members' buffer and their heap.
    fn estimate(&self, key_len: usize) -> usize {
        std::mem::size_of::<(Vec<u8>, Held<M>)>() * 3 / 2
            + heap_block(key_len)
            + heap_block(self.members.capacity() * std::mem::size_of::<M>())
            + self.heap
    }

    /// Brings `bytes`, and `total` (the set's sum), up to date after a change.
    fn refresh(&mut self, key_len: usize, total: &mut usize) {
        let after = self.estimate(key_len);
        *total = (*total - self.bytes) + after;
        self.bytes = after;
    }
}

/// A member of a [`BucketSet`] being changed: dereferences to it, and brings the set's
/// estimate of its bytes up to date when dropped.
pub(crate) struct MemberMut<'a, M: Member> {
    held: &'a mut Held<M>,
    index: usize,
    /// The member's `heap_bytes` before the change.
    before: usize,
    key_len: usize,
    total: &'a mut usize,
}

impl<M: Member> std::ops::Deref for MemberMut<'_, M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.held.members[self.index]
    }
}

impl<M: Member> std::ops::DerefMut for MemberMut<'_, M> {
    fn deref_mut(&mut self) -> &mut M {
        &mut self.held.members[self.index]
    }
}

impl<M: Member> Drop for MemberMut<'_, M> {
    fn drop(&mut self) {
        let after = self.held.members[self.index].heap_bytes();
        self.held.heap = (self.held.heap - self.before) + after;
        self.held.refresh(self.key_len, self.total);
    }
}

/// Buckets read through from the tree and written back on [`BucketSet::flush`]: the
/// bucket counterpart of [`crate::model::Stage`], for one [`crate::model::WorkingSet`].
pub(crate) struct BucketSet<M: Member> {
    projection: ProjectionName,
    cap: usize,
    /// By full tree key.
    held: BTreeMap<Vec<u8>, Held<M>>,
    /// The set knows every bucket of the tree (see `WorkingSet::assume_empty_tree`):
    /// it holds it, or its key is in `forgotten`.
    complete: bool,
    /// While `complete`: the keys of the buckets stored in the tree that `evict` forgot,
    /// so finding a member's bucket needs no lookup in the tree (a rebuild's sets stay
    /// as fast after an eviction as before).
    forgotten: BTreeSet<Vec<u8>>,
    /// Estimated bytes of every bucket held (sum of their `bytes`).
    bytes: usize,
    /// Estimated bytes of `forgotten`.
    forgotten_bytes: usize,
}

/// Estimated bytes of one key of `BucketSet::forgotten`: its slot in the B-tree and its
/// buffer.
fn forgotten_key_bytes(key_len: usize) -> usize {
    std::mem::size_of::<Vec<u8>>() * 3 / 2 + heap_block(key_len)
}

impl<M: Member> BucketSet<M> {
    pub(crate) fn new(projection: ProjectionName, cap: usize) -> Self {
        BucketSet {
            projection,
            cap: cap.max(2),
            held: BTreeMap::new(),
            complete: false,
            forgotten: BTreeSet::new(),
            bytes: 0,
            forgotten_bytes: 0,
        }
    }

    /// Holds the bucket stored under `key` (forgotten by `evict`) again.
    fn recall(&mut self, tree: &sled::Tree, key: Vec<u8>) -> Result<Vec<u8>, ProjectionError> {
        let value = tree.get(&key)?.ok_or_else(|| corrupt(self.projection, &key, "forgotten bucket not stored"))?;
        let members = decode_bucket(self.projection, &key, &value)?;
        self.forgotten.remove(&key);
        self.forgotten_bytes -= forgotten_key_bytes(key.len());
        let held = Held::new(key.len(), members, false);
        self.bytes += held.bytes;
        self.held.insert(key.clone(), held);
        Ok(key)
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
        if self.complete {
            let forgotten = self.forgotten.range(probe..).next().filter(|k| is_bucket_key(prefix, k));
            return match (held, forgotten) {
                (Some(held), Some(forgotten)) if held <= forgotten => Ok(Some(held.clone())),
                (_, Some(forgotten)) => {
                    let key = forgotten.clone();
                    self.recall(tree, key).map(Some)
                }
                (held, None) => Ok(held.cloned()),
            };
        }
        let stored = tree.range(probe..).next().transpose()?.filter(|(k, _)| is_bucket_key(prefix, k));
        match (held, stored) {
            (Some(held), Some((stored, _))) if held.as_slice() <= stored.as_ref() => Ok(Some(held.clone())),
            (_, Some((stored, value))) => {
                let key = stored.to_vec();
                if !self.held.contains_key(&key) {
                    let members = decode_bucket(self.projection, &key, &value)?;
                    let held = Held::new(key.len(), members, false);
                    self.bytes += held.bytes;
                    self.held.insert(key.clone(), held);
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
            let bucket_key = keys::key(&[prefix, &key]);
            let held = Held::new(bucket_key.len(), vec![member], true);
            self.bytes += held.bytes;
            self.held.insert(bucket_key, held);
            return Ok(());
        };
        let vanished = self.vanished();
        let held = self.held.get_mut(&bucket_key).ok_or(vanished)?;
        held.dirty = true;
        let added = member.heap_bytes();
        match held.members.binary_search_by(|m| m.member_key().cmp(&key)) {
            Ok(i) => {
                let replaced = std::mem::replace(&mut held.members[i], member);
                held.heap = (held.heap - replaced.heap_bytes()) + added;
            }
            Err(i) => {
                held.members.insert(i, member);
                held.heap += added;
            }
        }
        let mut lower_bucket = None;
        if held.members.len() > self.cap {
            let upper = held.members.split_off(held.members.len() / 2);
            let lower = std::mem::replace(&mut held.members, upper);
            held.heap -= lower.iter().map(Member::heap_bytes).sum::<usize>();
            if let Some(last) = lower.last() {
                let lower_key = keys::key(&[prefix, &last.member_key()]);
                lower_bucket = Some((lower_key, Held::new(bucket_key.len(), lower, true)));
            }
        }
        held.refresh(bucket_key.len(), &mut self.bytes);
        if let Some((lower_key, lower)) = lower_bucket {
            self.bytes += lower.bytes;
            self.held.insert(lower_key, lower);
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
    ) -> Result<Option<MemberMut<'_, M>>, ProjectionError> {
        let Some(bucket_key) = self.locate(tree, prefix, member)? else { return Ok(None) };
        let vanished = self.vanished();
        let BucketSet { held, bytes, .. } = self;
        let held = held.get_mut(&bucket_key).ok_or(vanished)?;
        match held.members.binary_search_by(|m| m.member_key().cmp(member)) {
            Ok(index) => {
                held.dirty = true;
                let before = held.members[index].heap_bytes();
                Ok(Some(MemberMut { held, index, before, key_len: bucket_key.len(), total: bytes }))
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

    /// See `WorkingSet::bytes`.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes + self.forgotten_bytes
    }

    /// Forgets the buckets not changed since the last flush (keeping their keys while
    /// the set knows the whole tree).
    pub(crate) fn evict(&mut self) {
        let BucketSet { held, complete, forgotten, bytes, forgotten_bytes, .. } = self;
        let mut kept = 0;
        held.retain(|key, held| {
            if held.dirty {
                kept += held.bytes;
            } else if *complete {
                *forgotten_bytes += forgotten_key_bytes(key.len());
                forgotten.insert(key.clone());
            }
            held.dirty
        });
        *bytes = kept;
    }

    /// See `WorkingSet::forget_tree`.
    pub(crate) fn forget_tree(&mut self) {
        self.complete = false;
        self.forgotten = BTreeSet::new();
        self.forgotten_bytes = 0;
    }

    /// See `WorkingSet::assume_empty_tree`.
    pub(crate) fn assume_empty_tree(&mut self) {
        self.complete = true;
    }

    /// The estimate computed afresh from every bucket held (what `bytes` must equal).
    #[cfg(test)]
    fn recount(&self) -> usize {
        let held: usize = self
            .held
            .iter()
            .map(|(key, held)| {
                assert_eq!(held.heap, held.members.iter().map(Member::heap_bytes).sum::<usize>());
                assert_eq!(held.bytes, held.estimate(key.len()));
                held.bytes
            })
            .sum();
        held + self.forgotten.iter().map(|key| forgotten_key_bytes(key.len())).sum::<usize>()
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
        /// As if it owned a buffer that grows with its count (so changes move the estimate).
        fn heap_bytes(&self) -> usize {
            heap_block(usize::try_from(self.1 % 5).unwrap() * 8)
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
        /// each flush, keeping their keys (a rebuild past its memory budget).
        Evicting,
        /// The same, forgetting the keys too (a rebuild whose keys alone are past it).
        Forgetting,
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
            let found = match set.get_mut(tree, prefix, &key).unwrap() {
                Some(mut c) => {
                    if *bump {
                        c.1 += 1;
                    }
                    true
                }
                None => false,
            };
            if !found {
                set.insert(tree, prefix, Counter(key, 0)).unwrap();
            }
            assert_eq!(set.bytes(), set.recount(), "the running estimate drifted");
            if (i + 1) % flush_every == 0 {
                let mut batch = sled::Batch::default();
                set.flush(&mut batch);
                tree.apply_batch(batch).unwrap();
                match mode {
                    Mode::Fresh => set = BucketSet::new(P, cap),
                    Mode::Evicting => {
                        set.evict();
                        assert_eq!(set.bytes, 0, "a flushed set holds only clean buckets");
                        assert_eq!(set.bytes(), set.recount());
                    }
                    Mode::Forgetting => {
                        set.evict();
                        set.forget_tree();
                        assert_eq!(set.bytes(), 0, "a flushed set holds only clean buckets");
                    }
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
            let forgetting = tree();
            run(&forgetting, &ops, flush_every, Mode::Forgetting, cap);
            prop_assert_eq!(dump(&live), dump(&forgetting));
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
