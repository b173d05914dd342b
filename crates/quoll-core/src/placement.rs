//! Load-aware placement: which worker owns each key group.
//!
//! A cluster's first formation splits the key groups evenly by number
//! ([`KeyGroupMap::even`]). From then on every worker counts the keyed
//! messages it processes per key group ([`KeyGroupLoad`]; a message counts
//! once, on its owner) and reports the counts to the initializer with each
//! checkpoint part; the initializer adds them up and decides where key
//! groups live:
//!
//! - **when the membership changes** (a grow or a shrink): the key groups of
//!   workers that are gone or leaving go, heaviest first, each to the least
//!   loaded remaining worker; then the placement is balanced ([`place`]);
//! - **periodically**: at a checkpoint commit, once the cluster has run for
//!   the rebalance interval since it last formed, if the busiest worker
//!   carries more than [`REBALANCE_ABOVE`] times the mean load and
//!   balancing would lower that peak by at least [`WORTHWHILE`]
//!   ([`rebalance`]). The cluster then re-forms with the new placement, so
//!   state moves at most once per interval.
//!
//! Balancing moves one key group at a time from the busiest worker to the
//! least busy one: the group whose load is closest to half the gap between
//! the two (the move that best evens the pair), never one as heavy as the
//! gap (that move would not lower the peak). It stops once the peak is
//! within [`TOLERANCE`] of the mean or no move lowers it. Each move lowers
//! the sum of the squared worker loads, so it ends. A key group weighs its
//! count plus one, so with nothing measured (a fresh start, a worker that
//! just joined) groups are balanced by number.
//!
//! Every moved key group's state travels through the checkpoint restore
//! (see [`crate::node`], "Restore"), so balancing starts from the current
//! placement and moves as few groups as it needs; it never recomputes a
//! placement from scratch.
//!
//! Invariants: every key group has exactly one owner, which is one of the
//! eligible workers; the result is a pure function of the arguments.

use crate::key_group::{KeyGroupMap, WorkerIndex, KEY_GROUPS};

/// Above this ratio of the busiest worker's load to the mean, a periodic
/// check rebalances.
pub const REBALANCE_ABOVE: f64 = 1.2;
/// A periodic rebalance happens only if it lowers the peak by this fraction.
pub const WORTHWHILE: f64 = 0.1;
/// Balancing stops once the busiest worker is within this fraction of the mean.
pub const TOLERANCE: f64 = 0.02;
/// A periodic check needs at least this many messages counted: fewer say
/// little about the load.
pub const MIN_MESSAGES: u64 = 16 * KEY_GROUPS as u64;

/// Keyed messages processed per key group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyGroupLoad {
    counts: Vec<u64>,
}

impl Default for KeyGroupLoad {
    fn default() -> Self {
        KeyGroupLoad {
            counts: vec![0; KEY_GROUPS as usize],
        }
    }
}

impl KeyGroupLoad {
    /// One message of key group `group`.
    #[inline]
    pub fn count(&mut self, group: u32) {
        self.counts[group as usize] += 1;
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &KeyGroupLoad) {
        for (c, o) in self.counts.iter_mut().zip(&other.counts) {
            *c += o;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The counts so far; this load starts again from zero.
    pub fn take(&mut self) -> KeyGroupLoad {
        std::mem::take(self)
    }

    /// The non-zero counts as `(key group, count)`: the wire form.
    pub fn sparse(&self) -> Vec<(u32, u64)> {
        (0..KEY_GROUPS)
            .zip(&self.counts)
            .filter(|(_, &c)| c > 0)
            .map(|(g, &c)| (g, c))
            .collect()
    }

    /// The load of [`KeyGroupLoad::sparse`]'s form; key groups out of range
    /// (a peer's garbage) are dropped.
    pub fn from_sparse(counts: &[(u32, u64)]) -> KeyGroupLoad {
        let mut load = KeyGroupLoad::default();
        for &(g, c) in counts {
            if let Some(slot) = load.counts.get_mut(g as usize) {
                *slot = slot.saturating_add(c);
            }
        }
        load
    }

    /// Each key group's weight for balancing: its count plus one.
    fn weights(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.saturating_add(1)).collect()
    }
}

/// The placement for a formation. `previous[g]` is key group `g`'s owner
/// before, as an index in the new member list, or `None` if that owner is
/// not a member any more; `eligible` are the members that may own key
/// groups (the others are leaving), at least one. Without a previous
/// placement the key groups are split evenly over `eligible`. If every
/// key group's owner is eligible and every eligible worker owns some, the
/// membership did not change: the previous placement stays as it is (a
/// recovery moves nothing; only [`rebalance`] evens a running cluster).
pub fn place(
    previous: Option<&[Option<WorkerIndex>]>,
    eligible: &[WorkerIndex],
    load: &KeyGroupLoad,
) -> KeyGroupMap {
    let Some(previous) = previous else {
        return KeyGroupMap::even_over(eligible);
    };
    let mut owners: Vec<Option<WorkerIndex>> = previous
        .iter()
        .map(|o| o.filter(|w| eligible.contains(w)))
        .collect();
    let unchanged =
        owners.iter().all(Option::is_some) && eligible.iter().all(|e| owners.contains(&Some(*e)));
    if unchanged {
        return KeyGroupMap::from_owners(owners.into_iter().flatten().collect());
    }
    let weights = load.weights();
    let mut loads = worker_loads(&owners, eligible, &weights);
    let mut orphans: Vec<usize> = (0..owners.len()).filter(|&g| owners[g].is_none()).collect();
    orphans.sort_by_key(|&g| std::cmp::Reverse(weights[g]));
    for g in orphans {
        let (slot, _) = loads
            .iter()
            .enumerate()
            .min_by_key(|(_, &l)| l)
            .expect("at least one eligible worker");
        loads[slot] += weights[g];
        owners[g] = Some(eligible[slot]);
    }
    let mut owners: Vec<WorkerIndex> = owners
        .into_iter()
        .map(|o| o.unwrap_or(eligible[0]))
        .collect();
    balance(&mut owners, eligible, &weights);
    KeyGroupMap::from_owners(owners)
}

/// The periodic check: a new placement if `map` leaves the busiest of
/// `eligible` with more than [`REBALANCE_ABOVE`] times the mean of `load`
/// and balancing lowers that peak by at least [`WORTHWHILE`]; else `None`.
pub fn rebalance(
    map: &KeyGroupMap,
    eligible: &[WorkerIndex],
    load: &KeyGroupLoad,
) -> Option<KeyGroupMap> {
    if eligible.len() < 2 || load.total() < MIN_MESSAGES {
        return None;
    }
    let weights = load.weights();
    let before = peak_over_mean(map.owners(), eligible, &weights);
    if before <= REBALANCE_ABOVE {
        return None;
    }
    let mut owners = map.owners().to_vec();
    balance(&mut owners, eligible, &weights);
    let after = peak_over_mean(&owners, eligible, &weights);
    (after <= before * (1.0 - WORTHWHILE)).then(|| KeyGroupMap::from_owners(owners))
}

/// The busiest eligible worker's load over the mean load, under `map`.
pub fn imbalance(map: &KeyGroupMap, eligible: &[WorkerIndex], load: &KeyGroupLoad) -> f64 {
    peak_over_mean(map.owners(), eligible, &load.weights())
}

fn peak_over_mean(owners: &[WorkerIndex], eligible: &[WorkerIndex], weights: &[u64]) -> f64 {
    let owned: Vec<Option<WorkerIndex>> = owners.iter().map(|&o| Some(o)).collect();
    let loads = worker_loads(&owned, eligible, weights);
    let total: u64 = loads.iter().sum();
    let peak = loads.iter().copied().max().unwrap_or(0);
    if total == 0 {
        return 1.0;
    }
    peak as f64 * eligible.len() as f64 / total as f64
}

/// The load of each of `eligible` (in that order) under `owners`.
fn worker_loads(
    owners: &[Option<WorkerIndex>],
    eligible: &[WorkerIndex],
    weights: &[u64],
) -> Vec<u64> {
    let mut loads = vec![0u64; eligible.len()];
    for (g, owner) in owners.iter().enumerate() {
        if let Some(slot) = owner.and_then(|o| eligible.iter().position(|&e| e == o)) {
            loads[slot] += weights[g];
        }
    }
    loads
}

/// Moves key groups between `eligible` workers until the load is even
/// enough (see the module doc). Every owner is eligible on entry.
fn balance(owners: &mut [WorkerIndex], eligible: &[WorkerIndex], weights: &[u64]) {
    if eligible.len() < 2 {
        return;
    }
    let owned: Vec<Option<WorkerIndex>> = owners.iter().map(|&o| Some(o)).collect();
    let mut loads = worker_loads(&owned, eligible, weights);
    let total: u64 = loads.iter().sum();
    let ceiling = total as f64 / eligible.len() as f64 * (1.0 + TOLERANCE);
    // Each move strictly lowers the sum of squared loads; the bound is
    // only a guard.
    for _ in 0..4 * KEY_GROUPS {
        let (busy, &peak) = loads
            .iter()
            .enumerate()
            .max_by_key(|(_, &l)| l)
            .expect("two workers");
        let (idle, &low) = loads
            .iter()
            .enumerate()
            .min_by_key(|(_, &l)| l)
            .expect("two workers");
        if peak as f64 <= ceiling {
            return;
        }
        let gap = peak - low;
        let best = (0..owners.len())
            .filter(|&g| owners[g] == eligible[busy] && weights[g] < gap)
            .min_by_key(|&g| (2 * weights[g]).abs_diff(gap));
        let Some(g) = best else { return };
        owners[g] = eligible[idle];
        loads[busy] -= weights[g];
        loads[idle] += weights[g];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Zipf(1) over `words` ranks, hashed into key groups like real keys.
    fn zipf_load(words: u32, messages: f64) -> KeyGroupLoad {
        let h: f64 = (1..=words).map(|r| 1.0 / f64::from(r)).sum();
        let mut load = KeyGroupLoad::default();
        for r in 1..=words {
            let g = crate::key_group::key_group(format!("w{r}").as_bytes());
            load.counts[g as usize] += (messages / (f64::from(r) * h)) as u64;
        }
        load
    }

    #[test]
    fn zipf_load_on_two_workers_is_evened_within_tolerance() {
        let load = zipf_load(10_000, 10_000_000.0);
        // The worst start: the heaviest half of the key groups on worker 0.
        let mut by_weight: Vec<usize> = (0..KEY_GROUPS as usize).collect();
        by_weight.sort_by_key(|&g| std::cmp::Reverse(load.counts[g]));
        let mut owners = vec![1; KEY_GROUPS as usize];
        for &g in &by_weight[..KEY_GROUPS as usize / 2] {
            owners[g] = 0;
        }
        let skewed = KeyGroupMap::from_owners(owners);
        let skew = imbalance(&skewed, &[0, 1], &load);
        let map = rebalance(&skewed, &[0, 1], &load).expect("skewed enough to rebalance");
        let after = imbalance(&map, &[0, 1], &load);
        assert!(after <= 1.0 + TOLERANCE + 1e-9, "{skew:.3} -> {after:.3}");
        assert!(
            rebalance(&map, &[0, 1], &load).is_none(),
            "a balanced map stays"
        );
    }

    #[test]
    fn a_joiner_gets_its_share_of_groups_with_no_load_measured() {
        let before = KeyGroupMap::even(2);
        let previous: Vec<Option<usize>> = before.owners().iter().map(|&o| Some(o)).collect();
        let map = place(Some(&previous), &[0, 1, 2], &KeyGroupLoad::default());
        let shares: Vec<usize> = (0..3).map(|w| map.owned_by(w)).collect();
        let mean = f64::from(KEY_GROUPS) / 3.0;
        assert!(
            shares
                .iter()
                .all(|&s| s as f64 <= mean * (1.0 + TOLERANCE) + 1.0),
            "{shares:?}"
        );
        assert!(
            shares[2] as f64 >= mean * (1.0 - 2.0 * TOLERANCE) - 1.0,
            "{shares:?}"
        );
        // Only the joiner's share moved: nothing between the old two.
        let moved_between_old = (0..KEY_GROUPS as usize)
            .filter(|&g| map.owners()[g] != 2 && map.owners()[g] != before.owners()[g])
            .count();
        assert_eq!(moved_between_old, 0);
    }

    #[test]
    fn the_same_membership_keeps_its_placement_however_uneven() {
        let map = KeyGroupMap::even(2);
        let previous: Vec<Option<usize>> = map.owners().iter().map(|&o| Some(o)).collect();
        let load = zipf_load(10_000, 1e7);
        assert_eq!(place(Some(&previous), &[0, 1], &load), map);
    }

    #[test]
    fn no_previous_placement_is_the_even_split() {
        let map = place(None, &[0, 2], &zipf_load(100, 1e6));
        assert_eq!(map, KeyGroupMap::even_over(&[0, 2]));
    }

    #[test]
    fn too_few_messages_never_rebalance() {
        let mut load = KeyGroupLoad::default();
        load.counts[0] = MIN_MESSAGES - 1;
        assert_eq!(rebalance(&KeyGroupMap::even(2), &[0, 1], &load), None);
    }

    proptest! {
        /// Any previous placement, any members gone, leaving or new, any
        /// load: every key group gets an eligible owner, and the load ends
        /// even within the tolerance and one key group's weight.
        #[test]
        fn changed_memberships_get_complete_eligible_even_placements(
            previous in proptest::collection::vec(proptest::option::of(0usize..5), KEY_GROUPS as usize),
            eligible in proptest::sample::subsequence(vec![0usize, 1, 2, 3, 4], 1..=5),
            newcomer in 5usize..7,
            counts in proptest::collection::vec((0u32..KEY_GROUPS, 0u64..1_000_000), 0..200),
        ) {
            // A worker that owned nothing before: the membership changed.
            let mut eligible = eligible;
            eligible.push(newcomer);
            let load = KeyGroupLoad::from_sparse(&counts);
            let map = place(Some(&previous), &eligible, &load);
            prop_assert!(map.owners().iter().all(|o| eligible.contains(o)));
            prop_assert_eq!(map.owners().len(), KEY_GROUPS as usize);
            let weights = load.weights();
            let w_max = weights.iter().copied().max().unwrap_or(1) as f64;
            let loads = worker_loads(&map.owners().iter().map(|&o| Some(o)).collect::<Vec<_>>(), &eligible, &weights);
            let total: u64 = loads.iter().sum();
            let mean = total as f64 / eligible.len() as f64;
            let peak = loads.iter().copied().max().unwrap_or(0) as f64;
            // Greedy balancing ends within one key group's weight of the
            // tolerance: no single move could lower the peak further.
            prop_assert!(peak <= mean * (1.0 + TOLERANCE) + w_max, "peak {peak} mean {mean}");
        }

        #[test]
        fn rebalancing_lowers_the_peak_or_changes_nothing(
            owners in proptest::collection::vec(0usize..3, KEY_GROUPS as usize),
            counts in proptest::collection::vec((0u32..KEY_GROUPS, 0u64..100_000), 0..300),
        ) {
            let load = KeyGroupLoad::from_sparse(&counts);
            let map = KeyGroupMap::from_owners(owners);
            let before = imbalance(&map, &[0, 1, 2], &load);
            match rebalance(&map, &[0, 1, 2], &load) {
                Some(next) => {
                    prop_assert!(before > REBALANCE_ABOVE);
                    prop_assert!(imbalance(&next, &[0, 1, 2], &load) <= before * (1.0 - WORTHWHILE));
                }
                None => {
                    let mut o = map.owners().to_vec();
                    balance(&mut o, &[0, 1, 2], &load.weights());
                    let balanced = imbalance(&KeyGroupMap::from_owners(o), &[0, 1, 2], &load);
                    prop_assert!(load.total() < MIN_MESSAGES
                        || before <= REBALANCE_ABOVE
                        || balanced > before * (1.0 - WORTHWHILE));
                }
            }
        }

        #[test]
        fn sparse_load_round_trips(counts in proptest::collection::vec((0u32..KEY_GROUPS, 1u64..1000), 0..100)) {
            let load = KeyGroupLoad::from_sparse(&counts);
            prop_assert_eq!(KeyGroupLoad::from_sparse(&load.sparse()), load.clone());
            prop_assert_eq!(load.total(), counts.iter().map(|c| c.1).sum::<u64>());
        }
    }
}
