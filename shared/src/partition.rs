//! Which partition a product's orders go to. Written once, used by the api
//! (to publish) and the worker (to own and consume), so both always agree.

use crate::domain::ProductId;

/// The partition of `product` among `partitions`: FNV-1a (64-bit) of the id's
/// little-endian bytes, modulo the partition count.
///
/// FNV is fixed by its specification, unlike `std`'s hasher, so the mapping
/// survives compiler upgrades and restarts.
pub fn partition_of(product: ProductId, partitions: u16) -> u16 {
    assert!(partitions > 0, "partition count must be positive");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in product.get().to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_is_stable() {
        // Pinned values: changing the hash would move live orders between
        // partitions and break arrival order, so this must never change.
        let got: Vec<u16> = (1..=8)
            .map(|id| partition_of(ProductId::new(id).unwrap(), 16))
            .collect();
        assert_eq!(got, PINNED);
    }

    // Computed independently (FNV-1a 64 over the 8 little-endian bytes).
    const PINNED: [u16; 8] = [4, 7, 6, 1, 0, 3, 2, 13];

    #[test]
    fn products_spread_over_partitions() {
        let mut counts = [0u32; 16];
        for id in 1..=1600 {
            counts[partition_of(ProductId::new(id).unwrap(), 16) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 50), "{counts:?}");
    }
}

/// Which worker should own each partition `0..partitions`: rendezvous
/// (highest-random-weight) hashing with bounded load. Each partition goes to
/// the worker that weighs it highest among those not yet holding
/// `ceil(partitions / workers)`, so loads differ by at most one step and a
/// joining or leaving worker moves few partitions. Every worker computes the
/// same answer from the same list of live workers.
pub fn assign(workers: &[String], partitions: u16) -> Vec<Option<&str>> {
    if workers.is_empty() {
        return vec![None; usize::from(partitions)];
    }
    let cap = usize::from(partitions).div_ceil(workers.len());
    let mut load = vec![0usize; workers.len()];
    (0..partitions)
        .map(|p| {
            let mut ranked: Vec<usize> = (0..workers.len()).collect();
            ranked
                .sort_by_key(|&i| std::cmp::Reverse((weight(&workers[i], p), workers[i].as_str())));
            let chosen = ranked.into_iter().find(|&i| load[i] < cap)?;
            load[chosen] += 1;
            Some(workers[chosen].as_str())
        })
        .collect()
}

fn weight(worker: &str, partition: u16) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in worker.bytes().chain(partition.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short inputs; finish with a splitmix step.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

#[cfg(test)]
mod rendezvous_tests {
    use super::*;

    fn workers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("worker-{i}-{}", i * 7919)).collect()
    }

    fn loads(ws: &[String], partitions: u16) -> Vec<usize> {
        let owners = assign(ws, partitions);
        ws.iter()
            .map(|w| owners.iter().filter(|o| **o == Some(w.as_str())).count())
            .collect()
    }

    #[test]
    fn three_workers_share_sixteen_partitions_evenly() {
        for seed in 0..200 {
            let ws: Vec<String> = (0..3).map(|i| format!("worker-{seed}-{i}")).collect();
            let l = loads(&ws, 16);
            assert_eq!(l.iter().sum::<usize>(), 16);
            assert!(l.iter().all(|&n| (4..=7).contains(&n)), "{l:?}");
        }
    }

    #[test]
    fn everyone_computes_the_same_assignment() {
        let ws = workers(4);
        let mut shuffled = ws.clone();
        shuffled.reverse();
        shuffled.sort();
        assert_eq!(assign(&ws, 16), assign(&shuffled, 16));
    }

    #[test]
    fn a_joining_worker_takes_its_share_and_moves_little() {
        let before = workers(3);
        let after = workers(4);
        let (a, b) = (assign(&before, 16), assign(&after, 16));
        let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        let joined = b.iter().filter(|o| **o == Some(after[3].as_str())).count();
        assert!(joined >= 4, "the newcomer owns {joined}");
        assert!(moved <= 8, "{moved} of 16 partitions moved");
    }

    #[test]
    fn no_workers_no_owners() {
        assert!(assign(&[], 4).iter().all(Option::is_none));
    }
}
