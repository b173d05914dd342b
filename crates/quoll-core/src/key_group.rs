//! Stable key hashing and key groups.
//!
//! A message key (the bytes of a `str` key's UTF-8 or a `bytes` key) hashes
//! into one of [`KEY_GROUPS`] key groups; key groups, not keys, are assigned
//! to workers. Invariants:
//!
//! - [`stable_hash`] depends only on the key's bytes: the same on every
//!   worker, every run, every platform. Routing after a restart is therefore
//!   identical, and checkpointed state is found where it was written.
//! - Every worker routes by the same [`KeyGroupMap`]: the even split of a
//!   cluster's first formation, or the placement the initializer decided
//!   and sent in `Welcome` (see [`crate::placement`]), so every worker finds
//!   the same owner for a key group without asking.
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

/// Which worker owns each key group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGroupMap {
    owners: Vec<WorkerIndex>,
}

/// Why a key-group map received from a peer or read from a file is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("the key-group map covers {0} key groups, not {KEY_GROUPS}")]
    Coverage(u64),
    #[error("the key-group map names worker {owner} of only {workers}")]
    Owner { owner: u64, workers: usize },
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

    /// Splits the key groups evenly over the workers `owners` (indices in
    /// the worker list, in order; at least one): the others own none.
    pub fn even_over(owners: &[WorkerIndex]) -> KeyGroupMap {
        let even = KeyGroupMap::even(owners.len());
        KeyGroupMap {
            owners: even
                .owners
                .iter()
                .map(|&rank| owners.get(rank).copied().unwrap_or(0))
                .collect(),
        }
    }

    /// The map with `runs` of `(owner, length)` in key-group order, each
    /// owner an index below `workers`: [`KeyGroupMap::runs`]'s inverse.
    pub fn from_runs(runs: &[(u32, u32)], workers: usize) -> Result<KeyGroupMap, MapError> {
        let covered: u64 = runs.iter().map(|&(_, len)| u64::from(len)).sum();
        if covered != u64::from(KEY_GROUPS) {
            return Err(MapError::Coverage(covered));
        }
        let mut owners = Vec::with_capacity(KEY_GROUPS as usize);
        for &(owner, len) in runs {
            if owner as usize >= workers {
                return Err(MapError::Owner {
                    owner: u64::from(owner),
                    workers,
                });
            }
            owners.extend(std::iter::repeat_n(owner as WorkerIndex, len as usize));
        }
        Ok(KeyGroupMap { owners })
    }

    /// The map as runs of `(owner, length)` in key-group order: compact
    /// for the wire, since placements keep long runs of the even split.
    pub fn runs(&self) -> Vec<(u32, u32)> {
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for &owner in &self.owners {
            match runs.last_mut() {
                Some((o, len)) if *o as usize == owner => *len += 1,
                _ => runs.push((owner as u32, 1)),
            }
        }
        runs
    }

    /// The map with the owner of every key group given, in order.
    pub(crate) fn from_owners(owners: Vec<WorkerIndex>) -> KeyGroupMap {
        debug_assert_eq!(owners.len(), KEY_GROUPS as usize);
        KeyGroupMap { owners }
    }

    /// The owner of every key group, in order.
    pub fn owners(&self) -> &[WorkerIndex] {
        &self.owners
    }

    /// How many key groups `worker` owns.
    pub fn owned_by(&self, worker: WorkerIndex) -> usize {
        self.owners.iter().filter(|&&o| o == worker).count()
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

    /// The FNV-1a half against the published FNV-1a 64 test vectors (the
    /// FNV reference test suite, also in the IETF FNV draft): the key's
    /// hash is `fmix64` of exactly those values.
    #[test]
    fn fnv_part_matches_the_published_vectors() {
        for (key, fnv1a_64) in [
            (&b""[..], 0xcbf2_9ce4_8422_2325_u64),
            (b"a", 0xaf63_dc4c_8601_ec8c),
            (b"b", 0xaf63_df4c_8601_f1a5),
            (b"foobar", 0x8594_4171_f739_67e8),
        ] {
            assert_eq!(stable_hash(key), fmix64(fnv1a_64), "key {key:?}");
        }
    }

    /// Whole hashes computed outside this code, by the Python version of
    /// the documented hash (`stable_hash` in tests/e2e/harness.py, which
    /// the end-to-end tests also check against where the engine really
    /// routes words).
    #[test]
    fn hash_matches_an_independent_implementation() {
        for (key, hash) in [
            (&b""[..], 0xefd0_1f60_ba99_2926_u64),
            (b"a", 0x82a2_a958_a9be_ce5b),
            (b"word", 0x4c78_5db2_fc3b_b1cf),
            (b"tcp-source-key", 0x152f_f38c_82db_fcaf),
            (b"w0001", 0x971e_6b60_bc47_9c5c),
            ("Z\u{fc}rich".as_bytes(), 0x24b2_2821_293c_05d0),
            (b"\x00\xff", 0xacb6_4f88_d28b_68b8),
            (b"12345", 0x2a80_c0ef_5611_03f3),
        ] {
            assert_eq!(stable_hash(key), hash, "key {key:?}");
        }
    }

    /// Pearson's chi-squared statistic of how `keys` fall into the key
    /// groups, against an even spread.
    fn chi_squared(keys: &[Vec<u8>]) -> f64 {
        let mut counts = vec![0u64; KEY_GROUPS as usize];
        for k in keys {
            counts[key_group(k) as usize] += 1;
        }
        let expected = keys.len() as f64 / f64::from(KEY_GROUPS);
        counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum()
    }

    /// Keys like real ones: decimal numbers, made-up words (consonant-vowel
    /// syllables), every lowercase string of 1 to 3 letters (keys that
    /// share prefixes and differ in the last byte), and prefixed ids.
    fn realistic_key_sets() -> Vec<(&'static str, Vec<Vec<u8>>)> {
        let numbers = (0..100_000)
            .map(|i: u32| i.to_string().into_bytes())
            .collect();
        let syllables: Vec<String> = "bcdfghjklmnprstvwz"
            .chars()
            .flat_map(|c| "aeiouy".chars().map(move |v| format!("{c}{v}")))
            .collect();
        let mut words = Vec::new();
        for a in &syllables {
            for b in &syllables {
                words.push(format!("{a}{b}").into_bytes());
                for c in "nrst".chars() {
                    words.push(format!("{a}{b}{c}").into_bytes());
                }
            }
        }
        let letters: Vec<u8> = (b'a'..=b'z').collect();
        let mut short = Vec::new();
        for &x in &letters {
            short.push(vec![x]);
            for &y in &letters {
                short.push(vec![x, y]);
                for &z in &letters {
                    short.push(vec![x, y, z]);
                }
            }
        }
        let ids = (0..50_000)
            .map(|i| format!("user-{i}").into_bytes())
            .collect();
        vec![
            ("decimal numbers", numbers),
            ("made-up words", words),
            ("1-3 letters", short),
            ("prefixed ids", ids),
        ]
    }

    /// The hash spreads realistic keys evenly over the key groups. With
    /// 1023 degrees of freedom the statistic of an even spread has mean
    /// 1023 and standard deviation 45; 1320 is exceeded with probability
    /// about 1e-9 (Wilson-Hilferty). A hash that ignores the last byte (so
    /// "120".."129" collide), or that reaches only some of the groups,
    /// scores 4,600 to 27,000 on these sets (this hash: 971 to 1066).
    #[test]
    fn realistic_keys_spread_evenly_over_the_key_groups() {
        for (what, keys) in realistic_key_sets() {
            let distinct: std::collections::HashSet<&Vec<u8>> = keys.iter().collect();
            assert_eq!(distinct.len(), keys.len(), "{what}: keys repeat");
            assert!(
                keys.len() >= 5 * KEY_GROUPS as usize,
                "{what}: too few keys for the test"
            );
            let x2 = chi_squared(&keys);
            assert!(
                x2 < 1320.0,
                "{what}: chi-squared {x2:.0} over {KEY_GROUPS} key groups ({} keys)",
                keys.len()
            );
        }
    }

    #[test]
    fn leaving_workers_own_no_key_groups_and_the_others_split_them_evenly() {
        let map = KeyGroupMap::even_over(&[0, 2]);
        let count = |w| {
            (0..KEY_GROUPS)
                .filter(|g| map.owner_of_group(*g) == w)
                .count()
        };
        assert_eq!((count(0), count(1), count(2)), (512, 0, 512));
        assert_eq!(KeyGroupMap::even_over(&[0, 1, 2]), KeyGroupMap::even(3));
    }

    /// The statistic above does catch bad hashes on these keys.
    #[test]
    fn the_spread_test_fails_bad_hashes() {
        let numbers: Vec<Vec<u8>> = (0..100_000)
            .map(|i: u32| i.to_string().into_bytes())
            .collect();
        let without_last: Vec<Vec<u8>> =
            numbers.iter().map(|k| k[..k.len() - 1].to_vec()).collect();
        // Hashing all but the last byte is the hash of the shortened key.
        assert!(chi_squared(&without_last) > 5000.0);
        let few_groups: Vec<Vec<u8>> = numbers.iter().map(|k| vec![k[k.len() - 1]]).collect();
        assert!(chi_squared(&few_groups) > 5000.0);
    }

    /// Three workers own about a third of the keys each.
    #[test]
    fn workers_own_even_shares_of_realistic_keys() {
        let map = KeyGroupMap::even(3);
        for (what, keys) in realistic_key_sets() {
            let mut owned = [0usize; 3];
            for k in &keys {
                owned[map.owner(k)] += 1;
            }
            for (w, &n) in owned.iter().enumerate() {
                let share = n as f64 / keys.len() as f64;
                assert!(
                    (share - 1.0 / 3.0).abs() < 0.02,
                    "{what}: worker {w} owns {share:.3} of the keys"
                );
            }
        }
    }

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

        /// Any map survives its runs; runs that miss or overrun the key
        /// groups, or name a worker past the list, are refused.
        #[test]
        fn runs_round_trip_and_bad_runs_are_refused(
            owners in proptest::collection::vec(0usize..4, KEY_GROUPS as usize),
            cut in 1u32..KEY_GROUPS,
        ) {
            let map = KeyGroupMap::from_owners(owners);
            let runs = map.runs();
            prop_assert_eq!(KeyGroupMap::from_runs(&runs, 4), Ok(map.clone()));
            prop_assert!(runs.windows(2).all(|w| w[0].0 != w[1].0));
            let short = [(0, cut)];
            prop_assert_eq!(KeyGroupMap::from_runs(&short, 4), Err(MapError::Coverage(u64::from(cut))));
            let over = [(0, KEY_GROUPS), (1, cut)];
            prop_assert!(KeyGroupMap::from_runs(&over, 4).is_err());
            let stranger = [(0, cut), (4, KEY_GROUPS - cut)];
            prop_assert_eq!(KeyGroupMap::from_runs(&stranger, 4), Err(MapError::Owner { owner: 4, workers: 4 }));
        }
    }
}
