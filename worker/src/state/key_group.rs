//! Key groups: keyed state is split into `maxParallelism` groups by a stable hash of the
//! key's canonical bytes, the unit that moves between workers when a job rescales.
//!
//! The hash is part of the persisted format, forever: XXH3-64 (`xxhash-rust`, the
//! reference algorithm of xxHash 0.8) with seed 0 over the key's canonical bytes (its
//! compact JSON text), modulo `maxParallelism`. Changing it would send every key of an
//! existing job's state to the wrong group; the pinned values in the tests guard it.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The seed of the key-group hash. Never change it.
pub const KEY_GROUP_HASH_SEED: u64 = 0;

/// A key group, `0..maxParallelism` (at most 32768 groups).
pub type KeyGroup = u16;

/// The key group of a key, from its canonical bytes.
pub fn key_group(canonical_key: &[u8], max_parallelism: u32) -> KeyGroup {
    let groups = u64::from(max_parallelism.max(1));
    let group = xxh3_64_with_seed(canonical_key, KEY_GROUP_HASH_SEED) % groups;
    KeyGroup::try_from(group).unwrap_or(KeyGroup::MAX)
}

/// The contiguous range of key groups a worker owns (as in Flink): worker `index` of
/// `parallelism` owns `[index * groups / parallelism, (index + 1) * groups / parallelism)`.
pub fn key_group_range(index: u32, parallelism: u32, max_parallelism: u32) -> std::ops::Range<u32> {
    let parallelism = parallelism.max(1);
    let start = u64::from(index) * u64::from(max_parallelism) / u64::from(parallelism);
    let end = (u64::from(index) + 1) * u64::from(max_parallelism) / u64::from(parallelism);
    u32::try_from(start).unwrap_or(u32::MAX)..u32::try_from(end).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned: these values are the persisted format. If this test fails, the hash
    /// changed and existing state would be read from the wrong key groups. The first
    /// hash is XXH3-64's reference value for empty input.
    #[test]
    fn the_hash_never_changes() {
        let hashes: [(&[u8], u64); 5] = [
            (b"", 0x2d06_8005_38d3_94c2),
            (b"\"/home\"", 0x5135_02fa_68a0_1c42),
            (b"\"d1\"", 0x3d8d_33d7_a7f2_ae0a),
            (b"42", 0x1217_cb28_c0ef_2191),
            (b"\"/cart\"", 0x913d_2b17_c563_01e2),
        ];
        for (key, hash) in hashes {
            assert_eq!(xxh3_64_with_seed(key, KEY_GROUP_HASH_SEED), hash, "{key:?}");
        }
        let groups: [(&[u8], u32, KeyGroup); 8] = [
            (b"\"/home\"", 16, 2),
            (b"\"/home\"", 32768, 7234),
            (b"\"d1\"", 32, 10),
            (b"42", 16, 1),
            (b"42", 32, 17),
            (b"\"/cart\"", 32768, 482),
            (b"\"/home\"", 1, 0),
            (b"", 0, 0),
        ];
        for (key, max_parallelism, group) in groups {
            assert_eq!(
                key_group(key, max_parallelism),
                group,
                "{key:?} of {max_parallelism}"
            );
        }
    }

    #[test]
    fn ranges_cover_every_group_once() {
        for max_parallelism in [1, 7, 16, 128] {
            for parallelism in 1..=max_parallelism.min(9) {
                let mut next = 0;
                for index in 0..parallelism {
                    let range = key_group_range(index, parallelism, max_parallelism);
                    assert_eq!(range.start, next);
                    next = range.end;
                }
                assert_eq!(next, max_parallelism);
            }
        }
    }
}
