//! The stock invariants, checked against the database as it is. Used by the
//! tests after every scenario and by operators through the admin endpoint.

use serde::Serialize;
use sqlx::MySqlPool;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Violation {
    /// Which invariant.
    pub invariant: Invariant,
    /// The product concerned (of the order, when the finding is about one).
    #[schema(minimum = 1)]
    pub product_id: u64,
    /// What was found.
    pub detail: String,
}

/// The invariants checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Invariant {
    /// `0 <= reserved_stock <= stored_stock`.
    ReservedOutOfRange,
    /// `reserved_stock` is the sum of the ACCEPTED orders' totals.
    ReservedNotSumOfAccepted,
    /// An order's record agrees with its status, decided at most once.
    DecisionInconsistent,
    /// A buyer's holding is the sum of their ACCEPTED and PAID totals.
    HoldingsNotSumOfOrders,
}

/// Checks every product and order:
/// - `0 <= reserved_stock <= stored_stock`;
/// - `reserved_stock` equals the sum of `total` over ACCEPTED orders;
/// - every order was decided at most once and its record agrees with its
///   status: PENDING has no decision, a decided order has one `decided_at`,
///   REJECTED has a reason, ACCEPTED/PAID/EXPIRED came through an acceptance
///   (`expires_at` set) and nothing else has one;
/// - each buyer's holding of a product equals the sum of `total` over the
///   buyer's ACCEPTED and PAID orders of it.
pub async fn check(pool: &MySqlPool) -> Result<Vec<Violation>, sqlx::Error> {
    let mut violations = Vec::new();
    let stock: Vec<(u64, i64, i64, i64)> = sqlx::query_as(
        "SELECT i.product_id, i.stored_stock, i.reserved_stock, \
                CAST(COALESCE((SELECT SUM(o.total) FROM orders o \
                               WHERE o.product_id = i.product_id AND o.status = 'ACCEPTED'), 0) AS SIGNED) \
         FROM inventories i",
    )
    .fetch_all(pool)
    .await?;
    for (product, stored, reserved, accepted) in stock {
        if !(0 <= reserved && reserved <= stored) {
            violations.push(Violation {
                invariant: Invariant::ReservedOutOfRange,
                product_id: product,
                detail: format!("reserved {reserved}, stored {stored}"),
            });
        }
        if reserved != accepted {
            violations.push(Violation {
                invariant: Invariant::ReservedNotSumOfAccepted,
                product_id: product,
                detail: format!("reserved {reserved}, accepted orders hold {accepted}"),
            });
        }
    }
    let inconsistent: Vec<(u64, String, i64)> = sqlx::query_as(
        "SELECT product_id, status, COUNT(*) FROM orders WHERE \
            (status = 'PENDING' AND (decided_at IS NOT NULL OR expires_at IS NOT NULL OR reason IS NOT NULL)) \
         OR (status IN ('ACCEPTED', 'REJECTED', 'PAID', 'EXPIRED') AND decided_at IS NULL) \
         OR (status = 'REJECTED' AND (reason IS NULL OR expires_at IS NOT NULL)) \
         OR (status IN ('ACCEPTED', 'PAID', 'EXPIRED') AND (expires_at IS NULL OR reason IS NOT NULL)) \
         GROUP BY product_id, status",
    )
    .fetch_all(pool)
    .await?;
    for (product, status, n) in inconsistent {
        violations.push(Violation {
            invariant: Invariant::DecisionInconsistent,
            product_id: product,
            detail: format!("{n} {status} orders whose decision fields disagree with their status"),
        });
    }
    let holdings: Vec<(u64, i64)> = sqlx::query_as(
        "SELECT product_id, COUNT(*) FROM ( \
            SELECT product_id FROM ( \
                SELECT product_id, buyer_id, held, 0 AS units FROM buyer_holdings \
                UNION ALL \
                SELECT product_id, buyer_id, 0, total FROM orders \
                WHERE buyer_id IS NOT NULL AND status IN ('ACCEPTED', 'PAID') \
            ) AS both_sides GROUP BY product_id, buyer_id HAVING SUM(held) <> SUM(units) \
         ) AS differing GROUP BY product_id",
    )
    .fetch_all(pool)
    .await?;
    for (product, buyers) in holdings {
        violations.push(Violation {
            invariant: Invariant::HoldingsNotSumOfOrders,
            product_id: product,
            detail: format!(
                "{buyers} buyers' holdings differ from the units their ACCEPTED and PAID orders hold"
            ),
        });
    }
    Ok(violations)
}
