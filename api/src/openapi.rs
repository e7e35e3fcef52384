//! The OpenAPI document, derived from the handlers' annotations. The
//! committed `apispec.json` must equal [`document`]; a test checks it.

use crate::routes;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flashstock",
        description = "An order service that cannot oversell: every order is reserved through a queue and gets one honest answer.",
        license(name = "MIT")
    ),
    tags(
        (name = "products", description = "Products"),
        (name = "inventory", description = "Stock per product"),
        (name = "orders", description = "Orders and their decisions"),
        (name = "admin", description = "Operator endpoints"),
        (name = "health", description = "Liveness and readiness"),
    )
)]
struct ApiDoc;

/// The OpenAPI document of every route.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, api) = utoipa_axum::router::OpenApiRouter::<crate::state::AppState>::with_openapi(
        ApiDoc::openapi(),
    )
    .merge(routes::router())
    .split_for_parts();
    let mut api = api;
    add_links(&mut api);
    add_security(&mut api);
    add_common_responses(&mut api);
    api
}

/// What every operation may answer besides its own responses: 405 with
/// `Allow` (another method on the same path), 408 (the request took longer
/// than `REQUEST_TIMEOUT`), and on every response the `x-request-id` echoed
/// or made up.
fn add_common_responses(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::header::Header;
    use utoipa::openapi::response::Response;
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{Content, Ref, RefOr};
    let header = |description: &str| {
        let mut h = Header::new(ObjectBuilder::new().schema_type(Type::String).build());
        h.description = Some(description.to_owned());
        RefOr::T(h)
    };
    let error = |description: &str| {
        let mut response = Response::new(description);
        response.content.insert(
            "application/json".to_owned(),
            RefOr::T(Content::new(Some(Ref::from_schema_name(
                "Envelope_ErrorBody",
            )))),
        );
        response
    };
    for operation in operations(api) {
        let responses = &mut operation.responses.responses;
        let mut not_allowed = error("`METHOD_NOT_ALLOWED`: the path does not take this method");
        not_allowed
            .headers
            .insert("Allow".to_owned(), header("The methods the path takes"));
        responses
            .entry("405".to_owned())
            .or_insert(RefOr::T(not_allowed));
        responses.entry("408".to_owned()).or_insert(RefOr::T(error(
            "`REQUEST_TIMEOUT`: the request took longer than REQUEST_TIMEOUT",
        )));
        for response in responses.values_mut() {
            if let RefOr::T(response) = response {
                response.headers.insert(
                        "x-request-id".to_owned(),
                        header("The request's id: the client's own `x-request-id`, or a new UUID; on every log line of the request"),
                    );
            }
        }
    }
}

/// The bearer credentials, and which each operation takes. An empty
/// requirement (`{}`) among them means the operation is open in the mode
/// where that credential is not configured (buyers anonymous, no
/// `ADMIN_TOKEN`, no `PAYMENT_TOKEN`).
fn add_security(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
    let bearer = |format: Option<&str>, description: &str| {
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.bearer_format = format.map(str::to_owned);
        http.description = Some(description.to_owned());
        SecurityScheme::Http(http)
    };
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "buyer",
        bearer(
            Some("JWT"),
            "A buyer's token from the shop's identity provider (BUYER_JWT_SECRET: HS256; BUYER_JWT_PUBLIC_KEY_FILE: RS256 or ES256); `sub` is the buyer. Required once a buyer key is configured.",
        ),
    );
    components.add_security_scheme("admin", bearer(None, "ADMIN_TOKEN, when set."));
    components.add_security_scheme(
        "payment",
        bearer(
            None,
            "PAYMENT_TOKEN: the payment service confirming payments.",
        ),
    );
    let only = |names: &[&str]| -> Vec<SecurityRequirement> {
        names
            .iter()
            .map(|n| SecurityRequirement::new(*n, Vec::<String>::new()))
            .chain(std::iter::once(SecurityRequirement::default()))
            .collect()
    };
    for operation in operations(api) {
        let requirement = match operation.operation_id.as_deref() {
            Some("create_order") => only(&["buyer"]),
            Some("get_order" | "list_orders") => only(&["buyer", "admin", "payment"]),
            Some("cancel_order") => only(&["buyer", "admin"]),
            Some("pay_order") => only(&["payment", "admin"]),
            Some(
                "create_product" | "update_product" | "put_inventory" | "get_invariants"
                | "get_order_summary",
            ) => only(&["admin"]),
            _ => continue,
        };
        operation.security = Some(requirement);
    }
}

/// Every operation of every path.
fn operations(
    api: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    api.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
    })
}

/// OpenAPI links: where the id a response carries can be used next. They
/// tell clients (and schemathesis' stateful phase) how the operations chain:
/// create a product, then order it; create an order, then poll, pay or
/// cancel it.
fn add_links(api: &mut utoipa::openapi::OpenApi) {
    use serde_json::json;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::link::{Link, LinkBuilder};
    let id = "$response.body#/data/id";
    let to = |operation: &str| {
        LinkBuilder::new()
            .operation_id(operation)
            .parameter("id", id)
            .build()
    };
    let product = [
        ("GetProduct", to("get_product")),
        ("GetInventory", to("get_inventory")),
        ("PutInventory", to("put_inventory")),
        ("GetOrderSummary", to("get_order_summary")),
        (
            "CreateOrder",
            LinkBuilder::new()
                .operation_id("create_order")
                .request_body(Some(json!({"product_id": id})))
                .build(),
        ),
    ];
    let order = [
        ("GetOrder", to("get_order")),
        ("PayOrder", to("pay_order")),
        ("CancelOrder", to("cancel_order")),
    ];
    type Links<'a> = &'a [(&'a str, Link)];
    let targets: [(&str, &[&str], Links); 4] = [
        ("/api/products", &["201"], &product),
        ("/api/orders", &["201", "202"], &order),
        ("/api/orders/{id}/pay", &["200"], &order[..1]),
        ("/api/orders/{id}/cancel", &["200"], &order[..1]),
    ];
    for (path, statuses, links) in targets {
        let Some(operation) = api
            .paths
            .paths
            .get_mut(path)
            .and_then(|item| item.post.as_mut())
        else {
            continue;
        };
        for status in statuses {
            if let Some(RefOr::T(response)) = operation.responses.responses.get_mut(*status) {
                for (name, link) in links {
                    response
                        .links
                        .insert((*name).to_owned(), RefOr::T(link.clone()));
                }
            }
        }
    }
}

/// The document as the pretty JSON committed in `apispec.json`.
pub fn document_json() -> String {
    let mut json = document()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    json.push('\n');
    json
}

#[cfg(test)]
mod tests {
    /// The committed `apispec.json` equals the document derived from the
    /// handlers. Regenerate with `UPDATE_APISPEC=1 cargo test -p flashstock-api apispec`.
    #[test]
    fn apispec_json_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../apispec.json");
        let current = super::document_json();
        if std::env::var_os("UPDATE_APISPEC").is_some() {
            std::fs::write(path, &current).expect("writing apispec.json");
            return;
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        if committed != current {
            let diff: Vec<String> = committed
                .lines()
                .zip(current.lines())
                .enumerate()
                .filter(|(_, (a, b))| a != b)
                .take(10)
                .map(|(i, (a, b))| format!("line {}:\n  committed: {a}\n  derived:   {b}", i + 1))
                .collect();
            panic!(
                "apispec.json is out of date ({} vs {} lines); first differences:\n{}\n\
                 regenerate with: UPDATE_APISPEC=1 cargo test -p flashstock-api apispec",
                committed.lines().count(),
                current.lines().count(),
                diff.join("\n")
            );
        }
    }
}
