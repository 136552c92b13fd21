//! Who owns what: a pure function of the worker's ordinal, the parallelism, the number of
//! key groups and the partition counts of the source topics (docs/architecture.md,
//! "Data distribution"). Workers assign partitions to themselves from it; no consumer
//! group rebalances work behind the controller's back.

use std::ops::Range;

use crate::state::key_group::key_group_range;
use crate::time::watermark::PartitionId;

/// The worker that owns key group `key_group` of `key_groups` at `parallelism`.
pub fn owner_of_key_group(key_group: u32, parallelism: u32, key_groups: u32) -> u32 {
    // The inverse of `key_group_range`: the least ordinal whose range ends after the group.
    let parallelism = u64::from(parallelism.max(1));
    let key_groups = u64::from(key_groups.max(1));
    let owner = ((u64::from(key_group) + 1) * parallelism - 1) / key_groups;
    u32::try_from(owner).unwrap_or(u32::MAX)
}

/// The key group that source partition number `index` of `total` stands for: partitions
/// spread over key groups as evenly as they can, so they spread over workers as key
/// groups do. In `ByKey` mode it is the key group of every event of the partition.
pub fn key_group_of_partition(index: u32, total: u32, key_groups: u32) -> u32 {
    let index = u64::from(index);
    let total = u64::from(total.max(1));
    u32::try_from(index * u64::from(key_groups) / total).unwrap_or(u32::MAX)
}

/// The source partitions of every topic, numbered in the order of the job's topics, then
/// by partition: `partition_counts[t]` partitions for topic `t`.
pub fn all_partitions(partition_counts: &[i32]) -> Vec<PartitionId> {
    partition_counts
        .iter()
        .enumerate()
        .flat_map(|(topic, count)| {
            let topic = u16::try_from(topic).unwrap_or(u16::MAX);
            (0..*count).map(move |partition| PartitionId::new(topic, partition))
        })
        .collect()
}

/// What one worker owns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    /// Its key groups.
    pub key_groups: Range<u32>,
    /// Its source partitions.
    pub partitions: Vec<PartitionId>,
}

/// What worker `ordinal` of `parallelism` owns, with `key_groups` key groups and the
/// source topics' partition counts.
pub fn ownership(
    ordinal: u32,
    parallelism: u32,
    key_groups: u32,
    partition_counts: &[i32],
) -> Ownership {
    let partitions = all_partitions(partition_counts);
    let total = u32::try_from(partitions.len()).unwrap_or(u32::MAX);
    let owned = partitions
        .into_iter()
        .enumerate()
        .filter(|(index, _)| {
            let index = u32::try_from(*index).unwrap_or(u32::MAX);
            owner_of_key_group(
                key_group_of_partition(index, total, key_groups),
                parallelism,
                key_groups,
            ) == ordinal
        })
        .map(|(_, partition)| partition)
        .collect();
    Ownership {
        key_groups: key_group_range(ordinal, parallelism, key_groups),
        partitions: owned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_of_a_key_group_is_the_worker_whose_range_holds_it() {
        for key_groups in [1, 2, 7, 16, 128, 1000] {
            for parallelism in 1..=key_groups.min(40) {
                for ordinal in 0..parallelism {
                    for group in key_group_range(ordinal, parallelism, key_groups) {
                        assert_eq!(
                            owner_of_key_group(group, parallelism, key_groups),
                            ordinal,
                            "group {group} of {key_groups} at parallelism {parallelism}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_partition_has_one_owner_and_they_spread_evenly() {
        struct Case {
            partition_counts: &'static [i32],
            key_groups: u32,
            parallelism: u32,
            expected: &'static [&'static [(u16, i32)]],
        }
        let cases = [
            Case {
                partition_counts: &[4],
                key_groups: 16,
                parallelism: 2,
                expected: &[&[(0, 0), (0, 1)], &[(0, 2), (0, 3)]],
            },
            Case {
                // Partition 0 of two topics are two partitions.
                partition_counts: &[2, 2],
                key_groups: 16,
                parallelism: 2,
                expected: &[&[(0, 0), (0, 1)], &[(1, 0), (1, 1)]],
            },
            Case {
                partition_counts: &[3],
                key_groups: 128,
                parallelism: 3,
                expected: &[&[(0, 0)], &[(0, 1)], &[(0, 2)]],
            },
            Case {
                // More workers than partitions: some read none.
                partition_counts: &[2],
                key_groups: 16,
                parallelism: 4,
                expected: &[&[(0, 0)], &[], &[(0, 1)], &[]],
            },
            Case {
                partition_counts: &[6],
                key_groups: 4,
                parallelism: 4,
                expected: &[&[(0, 0), (0, 1)], &[(0, 2)], &[(0, 3), (0, 4)], &[(0, 5)]],
            },
        ];
        for case in cases {
            let mut seen = Vec::new();
            for ordinal in 0..case.parallelism {
                let owned = ownership(
                    ordinal,
                    case.parallelism,
                    case.key_groups,
                    case.partition_counts,
                );
                let expected: Vec<PartitionId> = case.expected[ordinal as usize]
                    .iter()
                    .map(|(topic, partition)| PartitionId::new(*topic, *partition))
                    .collect();
                assert_eq!(
                    owned.partitions, expected,
                    "{:?} at parallelism {}, worker {ordinal}",
                    case.partition_counts, case.parallelism
                );
                seen.extend(owned.partitions);
            }
            seen.sort();
            assert_eq!(seen, all_partitions(case.partition_counts));
        }
    }
}
