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
