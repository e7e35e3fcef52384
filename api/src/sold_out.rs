//! Products the workers reported sold out: the hint that lets the recorder
//! reject orders for them on the spot, without queueing.

use shared::domain::ProductId;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// Products the workers reported sold out. Only a hint: for these the
/// recorder reads the stock before queueing, and an order for one that
/// still has nothing available is rejected on the spot; a product found
/// with stock again leaves the set. Bounded by the number of products.
#[derive(Clone, Default)]
pub struct SoldOut(Arc<RwLock<HashSet<ProductId>>>);

impl SoldOut {
    /// Notes products the workers found with nothing available.
    pub fn mark(&self, products: &[ProductId]) {
        if !products.is_empty() {
            self.0
                .write()
                .expect("sold-out lock")
                .extend(products.iter().copied());
        }
    }

    /// The hinted products among `products`, once each.
    pub fn among(&self, products: impl Iterator<Item = ProductId>) -> Vec<ProductId> {
        let hinted = self.0.read().expect("sold-out lock");
        if hinted.is_empty() {
            return Vec::new();
        }
        let mut found: Vec<ProductId> = products.filter(|p| hinted.contains(p)).collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    /// Forgets products found with stock available.
    pub fn clear(&self, products: &[ProductId]) {
        if !products.is_empty() {
            let mut hinted = self.0.write().expect("sold-out lock");
            for p in products {
                hinted.remove(p);
            }
        }
    }
}
