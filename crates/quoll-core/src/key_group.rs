//! Stable key hashing and key groups.
//!
//! A message key (the bytes of a `str` key's UTF-8 or a `bytes` key) hashes
//! into one of [`KEY_GROUPS`] key groups; key groups, not keys, are assigned
//! to workers. Invariants:
//!
//! - [`stable_hash`] depends only on the key's bytes: the same on every
//!   worker, every run, every platform. Routing after a restart is therefore
//!   identical, and checkpointed state is found where it was written.
//! - [`KeyGroupMap`] is a pure function of the sorted worker list, so every
//!   worker computes the same owner for a key group without talking to others.
//!
//! The hash is FNV-1a over the bytes followed by a 64-bit finaliser (the
//! murmur3 `fmix64`), so short keys that differ in one byte still spread
//! across key groups.

/// Number of key groups. Fixed for the life of a cluster's checkpoints: it is
/// the unit in which state would move if the cluster were rescaled.
pub const KEY_GROUPS: u32 = 1024;

/// A 64-bit hash of `key` that is identical on every worker and every run.
#[inline]
pub fn stable_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    fmix64(h)
}

#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The key group of `key`.
#[inline]
pub fn key_group(key: &[u8]) -> u32 {
    (stable_hash(key) % u64::from(KEY_GROUPS)) as u32
}

/// Index of a worker in the cluster's sorted worker list.
pub type WorkerIndex = usize;

/// Which worker owns each key group: contiguous ranges of key groups, one
/// range per worker, in the order of the sorted worker list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGroupMap {
    owners: Vec<WorkerIndex>,
}

impl KeyGroupMap {
    /// Splits the key groups evenly over `workers` workers (at least one).
    pub fn even(workers: usize) -> KeyGroupMap {
        let workers = workers.max(1) as u64;
        let owners = (0..u64::from(KEY_GROUPS))
            .map(|g| (g * workers / u64::from(KEY_GROUPS)) as WorkerIndex)
            .collect();
        KeyGroupMap { owners }
    }

    /// The worker owning key group `group`.
    #[inline]
    pub fn owner_of_group(&self, group: u32) -> WorkerIndex {
        self.owners[group as usize]
    }

    /// The worker owning `key`.
    #[inline]
    pub fn owner(&self, key: &[u8]) -> WorkerIndex {
        self.owner_of_group(key_group(key))
    }
}

/// A `BuildHasher` for in-memory maps keyed by key bytes. It uses
/// [`stable_hash`] so a state map's hashing is as cheap as the routing hash.
#[derive(Debug, Clone, Copy, Default)]
pub struct KeyHashBuilder;

/// The hasher built by [`KeyHashBuilder`]: FNV-1a over everything written,
/// finalised on `finish`.
#[derive(Debug, Clone, Copy)]
pub struct KeyHasher(u64);

impl std::hash::BuildHasher for KeyHashBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    #[inline]
    fn finish(&self) -> u64 {
        fmix64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hash_is_pinned() {
        // These values are part of the checkpoint format: changing the hash
        // would move keys between workers after an upgrade.
        assert_eq!(stable_hash(b""), fmix64(0xcbf2_9ce4_8422_2325));
        let pinned: Vec<u32> = [&b"a"[..], b"b", b"word", b"tcp-source-key"]
            .iter()
            .map(|k| key_group(k))
            .collect();
        assert_eq!(pinned, vec![PINNED_A, PINNED_B, PINNED_WORD, PINNED_TCP]);
    }
    const PINNED_A: u32 = 603;
    const PINNED_B: u32 = 720;
    const PINNED_WORD: u32 = 463;
    const PINNED_TCP: u32 = 175;

    #[test]
    fn even_map_covers_every_worker_contiguously() {
        for n in 1..=7 {
            let m = KeyGroupMap::even(n);
            let mut last = 0;
            for g in 0..KEY_GROUPS {
                let o = m.owner_of_group(g);
                assert!(o >= last && o < n);
                last = o;
            }
            assert_eq!(m.owner_of_group(0), 0);
            assert_eq!(m.owner_of_group(KEY_GROUPS - 1), n - 1);
        }
    }

    proptest! {
        #[test]
        fn groups_in_range_and_hasher_agrees(key in proptest::collection::vec(any::<u8>(), 0..64)) {
            use std::hash::{BuildHasher, Hasher};
            prop_assert!(key_group(&key) < KEY_GROUPS);
            let mut h = KeyHashBuilder.build_hasher();
            h.write(&key);
            prop_assert_eq!(h.finish(), stable_hash(&key));
        }
    }
}
