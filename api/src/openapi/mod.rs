//! The OpenAPI document, derived from the handlers' annotations. The
//! committed `apispec.json` must equal [`document`]; a test checks it.

mod shape;

use crate::routes;
use shared::error_code::ErrorCode;
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

/// The codes an operation answers with besides those its documented
/// statuses imply (see [`codes_of_status`]): what its parsing, lookups and
/// transitions refuse with.
fn operation_codes(operation_id: &str) -> &'static [ErrorCode] {
    use ErrorCode::*;
    match operation_id {
        "list_orders" => &[InvalidQuery, InvalidStatus, InvalidProductId],
        "create_order" => &[
            InvalidProductId,
            InvalidTotal,
            ProductNotFound,
            InvalidIdempotencyKey,
            IdempotencyKeyReused,
            Overloaded,
        ],
        "get_order" => &[InvalidOrderId, OrderNotFound],
        "pay_order" | "cancel_order" => &[
            InvalidOrderId,
            OrderNotFound,
            InvalidTransition,
            OrderExpired,
            InvalidIdempotencyKey,
            IdempotencyKeyReused,
        ],
        "list_products" => &[InvalidQuery],
        "create_product" => &[
            InvalidName,
            InvalidStock,
            InvalidMaxPerBuyer,
            InvalidSaleWindow,
            InvalidIdempotencyKey,
            IdempotencyKeyReused,
        ],
        "get_product" | "get_inventory" => &[InvalidProductId, ProductNotFound],
        "update_product" => &[
            InvalidProductId,
            ProductNotFound,
            InvalidMaxPerBuyer,
            InvalidSaleWindow,
        ],
        "put_inventory" => &[
            InvalidProductId,
            ProductNotFound,
            InvalidStock,
            StockBelowReserved,
        ],
        "get_order_summary" => &[InvalidProductId, ProductNotFound],
        _ => &[],
    }
}

/// The codes a documented status implies, whatever the operation.
fn codes_of_status(status: &str) -> &'static [ErrorCode] {
    use ErrorCode::*;
    match status {
        "401" => &[Unauthorized],
        "403" => &[Forbidden],
        "405" => &[MethodNotAllowed],
        "408" => &[RequestTimeout],
        "412" => &[PreconditionFailed],
        // A body the api could not read: not JSON, not the object expected,
        // too large, or of another type.
        "413" => &[PayloadTooLarge, MalformedJson, InvalidBody],
        "415" => &[UnsupportedMediaType, MalformedJson, InvalidBody],
        "500" => &[Internal],
        "503" => &[ServiceUnavailable],
        _ => &[],
    }
}

/// Each operation's error answers carry `data.error` as an enum of the
/// codes that operation answers with, instead of every code there is: for
/// `create_order`, `CreateOrderErrorEnvelope` around `CreateOrderErrorBody`,
/// an [`ErrorBody`](crate::envelope::ErrorBody) whose `error` is
/// `CreateOrderErrorCode`, the codes it answers with, each from [`ErrorCode`]
/// (in the enum's order). An operation with a path parameter may also answer
/// `INVALID_ID` (a path that is not even text). Runs on the JSON, after
/// [`shape::name_envelopes`].
fn add_error_codes(doc: &mut serde_json::Value) {
    use serde_json::json;
    let mut schemas = Vec::new();
    for (path, operation) in shape::operations_mut(doc) {
        let Some(id) = operation["operationId"].as_str().map(str::to_owned) else {
            continue;
        };
        let mut codes: Vec<ErrorCode> = operation_codes(&id).to_vec();
        let responses = operation["responses"].as_object_mut().expect("responses");
        for status in responses.keys() {
            codes.extend_from_slice(codes_of_status(status));
        }
        if path.contains('{') {
            codes.push(ErrorCode::InvalidId);
        }
        let codes: Vec<&str> = ErrorCode::ALL
            .iter()
            .filter(|c| codes.contains(c))
            .map(|c| c.as_str())
            .collect();
        let pascal = shape::pascal_case(&id);
        let code = format!("{pascal}ErrorCode");
        let body = format!("{pascal}ErrorBody");
        let envelope = format!("{pascal}ErrorEnvelope");
        let error_envelope = shape::schema_ref("ErrorEnvelope");
        for response in responses.values_mut() {
            if let Some(schema) = response.pointer_mut("/content/application~1json/schema/$ref")
                && schema.as_str() == Some(error_envelope.as_str())
            {
                *schema = shape::schema_ref(&envelope).into();
            }
        }
        schemas.push((
            code.clone(),
            json!({
                "type": "string",
                "description": format!("The codes `{id}` answers with: a subset of `ErrorCode`."),
                "enum": codes,
            }),
        ));
        schemas.push((
            body.clone(),
            json!({
                "type": "object",
                "description": format!("`data` of an error answer of `{id}`."),
                "required": ["error", "message"],
                "properties": {
                    "error": {"$ref": shape::schema_ref(&code)},
                    "message": {"type": "string", "description": "What went wrong, for people."},
                },
            }),
        ));
        schemas.push((envelope, shape::envelope_of(&body)));
    }
    if let Some(components) = doc["components"]["schemas"].as_object_mut() {
        components.extend(schemas);
    }
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
        responses.entry("500".to_owned()).or_insert(RefOr::T(error(
            "`INTERNAL`: an unexpected failure (logged; the answer leaks nothing)",
        )));
        for (status, response) in responses.iter_mut() {
            if let RefOr::T(response) = response {
                response.headers.insert(
                        "x-request-id".to_owned(),
                        header("The request's id: the client's own `x-request-id`, or a new UUID; on every log line of the request"),
                    );
                // Every 401 names the scheme (RFC 9110 §11.6.1).
                if status == "401" && !response.headers.contains_key("WWW-Authenticate") {
                    response
                        .headers
                        .insert("WWW-Authenticate".to_owned(), header("Bearer"));
                }
                // A dependency down (an error envelope, not readiness's
                // report): when to try again.
                let is_error = response.content.values().any(|c| {
                    matches!(c, RefOr::T(c) if matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location.ends_with("/Envelope_ErrorBody")))
                });
                if status == "503" && is_error && !response.headers.contains_key("Retry-After") {
                    response.headers.insert(
                        "Retry-After".to_owned(),
                        header("Seconds to wait before retrying"),
                    );
                }
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
    operations_by_path(api).map(|(_, operation)| operation)
}

/// Every operation of every path, with its path.
fn operations_by_path(
    api: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = (&String, &mut utoipa::openapi::path::Operation)> {
    api.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        .map(move |operation| (path, operation))
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

/// The document as served and committed in `apispec.json` (pretty JSON):
/// [`document`] shaped for code generators ([`shape`]), each operation's
/// error codes its own enum, with `servers` and the license named.
pub fn document_json() -> String {
    let mut doc = serde_json::to_value(document()).expect("the OpenAPI document serializes");
    shape::name_envelopes(&mut doc);
    add_error_codes(&mut doc);
    shape::for_generators(&mut doc);
    doc["servers"] = serde_json::json!([
        {"url": "http://127.0.0.1:3000", "description": "The api as `scripts/run.sh` or `docker compose up` starts it (API_ADDR)"}
    ]);
    doc["info"]["license"] = serde_json::json!({"name": "MIT", "identifier": "MIT"});
    let mut json = serde_json::to_string_pretty(&doc).expect("JSON serializes");
    json.push('\n');
    json
}

#[cfg(test)]
mod tests {
    use shared::error_code::ErrorCode;

    /// Every error answer of every operation names its own enum of codes,
    /// each a code of [`ErrorCode`], and the codes the handlers are known to
    /// answer with are in it.
    #[test]
    fn each_operation_lists_its_error_codes() {
        let doc: serde_json::Value = serde_json::from_str(&super::document_json()).unwrap();
        let schemas = &doc["components"]["schemas"];
        let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let mut operations = 0;
        for item in doc["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                let Some(id) = operation["operationId"].as_str() else {
                    continue;
                };
                operations += 1;
                let name = super::shape::pascal_case(id);
                let codes: Vec<&str> = schemas[format!("{name}ErrorCode")]["enum"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{name}ErrorCode is an enum"))
                    .iter()
                    .map(|c| c.as_str().unwrap())
                    .collect();
                assert!(codes.iter().all(|c| all.contains(c)), "{id}: {codes:?}");
                assert!(codes.contains(&"METHOD_NOT_ALLOWED"), "{id}");
                for (status, response) in operation["responses"].as_object().unwrap() {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    // Two error answers carry another body: a rejected
                    // order, and readiness saying which dependency is down.
                    let other = ["OrderOrErrorEnvelope", "ReadinessEnvelope"]
                        .map(|n| format!("#/components/schemas/{n}"));
                    if status.as_str() >= "400"
                        && !other.iter().any(|o| schema.as_str() == Some(o.as_str()))
                    {
                        assert_eq!(
                            schema.as_str(),
                            Some(format!("#/components/schemas/{name}ErrorEnvelope").as_str()),
                            "{id} {status}"
                        );
                    }
                }
            }
        }
        assert_eq!(operations, 15);
        let codes = |id: &str| schemas[format!("{id}ErrorCode")].to_string();
        assert!(codes("CreateOrder").contains("INVALID_TOTAL"));
        assert!(codes("CreateOrder").contains("OVERLOADED"));
        assert!(codes("PayOrder").contains("ORDER_EXPIRED"));
        assert!(!codes("GetProduct").contains("INVALID_TOTAL"));
    }

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
