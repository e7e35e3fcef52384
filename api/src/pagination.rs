//! Pagination shared by every list endpoint: `?page=&per_page=` in, a
//! `Link` header out.

use crate::error::ApiError;
use axum::http::StatusCode;
use serde::Deserialize;
use shared::error_code::ErrorCode;
use utoipa::IntoParams;

/// Which page of a list.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page number, from 1 (default 1).
    #[param(minimum = 1, maximum = 1000000)]
    pub page: Option<u32>,
    /// Items per page, 1 to 100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub per_page: Option<u32>,
}

/// A checked page request.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Page number, from 1.
    pub page: u32,
    /// Items per page, 1 to 100.
    pub per_page: u32,
}

impl Bounds {
    /// Rows to skip.
    pub fn offset(self) -> u64 {
        u64::from(self.page - 1) * u64::from(self.per_page)
    }
}

impl PageQuery {
    /// Checks `page` (1 to 1,000,000; default 1) and `per_page` (1 to 100; default 20).
    pub fn bounds(&self) -> Result<Bounds, ApiError> {
        let page = self.page.unwrap_or(1);
        let per_page = self.per_page.unwrap_or(20);
        if !(1..=1_000_000).contains(&page) {
            return Err(ApiError::client(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidQuery,
                "page must be from 1 to 1000000",
            ));
        }
        if !(1..=100).contains(&per_page) {
            return Err(ApiError::client(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidQuery,
                "per_page must be from 1 to 100",
            ));
        }
        Ok(Bounds { page, per_page })
    }
}

/// The `Link` header of a page (RFC 8288): `first`, `prev`, `next` and
/// `last` as they exist, each `path` with `filters` and the page's size.
pub fn links(
    path: &str,
    filters: &[(&str, String)],
    bounds: Bounds,
    total_items: u64,
) -> Option<axum::http::HeaderValue> {
    let pages = total_items.div_ceil(u64::from(bounds.per_page));
    Links {
        path,
        filters,
        per_page: bounds.per_page,
        total_items,
        prev: Some(bounds.page),
        next: (u64::from(bounds.page) < pages).then(|| ("page", (bounds.page + 1).to_string())),
    }
    .header()
}

/// What a page's `Link` header names.
pub struct Links<'a> {
    /// The list's path.
    pub path: &'a str,
    /// Its filters, repeated in every link.
    pub filters: &'a [(&'a str, String)],
    /// The page's size, repeated in every link.
    pub per_page: u32,
    /// Matching items in all pages.
    pub total_items: u64,
    /// This page's number, when `prev` is to be named by number.
    pub prev: Option<u32>,
    /// The next page's parameter (`page` or a cursor), if there is one.
    pub next: Option<(&'a str, String)>,
}

impl Links<'_> {
    /// The header; none for an empty list.
    pub fn header(&self) -> Option<axum::http::HeaderValue> {
        if self.total_items == 0 {
            return None;
        }
        let pages = self.total_items.div_ceil(u64::from(self.per_page));
        let target = |name: &str, value: &str| {
            let mut query: Vec<String> = self
                .filters
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            query.push(format!("{name}={value}"));
            query.push(format!("per_page={}", self.per_page));
            format!("<{}?{}>", self.path, query.join("&"))
        };
        let mut links = vec![format!("{}; rel=\"first\"", target("page", "1"))];
        if let Some(page) = self.prev.map(u64::from).filter(|p| *p > 1) {
            let prev = (page - 1).min(pages).to_string();
            links.push(format!("{}; rel=\"prev\"", target("page", &prev)));
        }
        if let Some((name, value)) = &self.next {
            links.push(format!("{}; rel=\"next\"", target(name, value)));
        }
        links.push(format!(
            "{}; rel=\"last\"",
            target("page", &pages.to_string())
        ));
        axum::http::HeaderValue::from_str(&links.join(", ")).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_name_the_neighbours_that_exist() {
        let bounds = Bounds {
            page: 2,
            per_page: 10,
        };
        let link = links("/api/orders", &[("status", "PENDING".into())], bounds, 35).unwrap();
        let link = link.to_str().unwrap();
        assert!(
            link.contains("</api/orders?status=PENDING&page=3&per_page=10>; rel=\"next\""),
            "{link}"
        );
        assert!(
            link.contains("</api/orders?status=PENDING&page=1&per_page=10>; rel=\"prev\""),
            "{link}"
        );
        assert!(link.contains("page=4&per_page=10>; rel=\"last\""), "{link}");
        let last = Bounds {
            page: 4,
            per_page: 10,
        };
        assert!(
            !links("/api/orders", &[], last, 35)
                .unwrap()
                .to_str()
                .unwrap()
                .contains("next")
        );
    }
}
