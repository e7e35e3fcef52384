"""A storefront on the generated Python client: the example to start from.

Generate the client from the `apispec.json` of the flashstock you run, and put
the folder that holds `flashstock_client` on PYTHONPATH:

    pipx run --spec openapi-python-client==0.29.1 openapi-python-client \\
        generate --path apispec.json --meta none        # makes ./flashstock_client

Every caller is an `AuthenticatedClient` with its own token (sent as
`Authorization: Bearer <token>`): a buyer with their JWT, the payment service
with PAYMENT_TOKEN, the sellers with ADMIN_TOKEN.

    buyer = connect("http://localhost:3000", token=buyer_jwt)
    payments = connect("http://localhost:3000", token=payment_token)

    product = list_products(buyer)[0]
    order = place_order(buyer, product.id, total=1, key=str(uuid.uuid4()))
    order = wait_for_decision(buyer, order.id)
    if order.status == OrderStatus.ACCEPTED:
        order = pay(payments, order.id)          # PAID; or cancel(buyer, order.id)

Errors: every error answer is `{"error": CODE, "message": text}`. In the
generated code each operation has its own enum of the codes it answers with
(`CreateOrderErrorCode`, `PayOrderErrorCode`, ...), all values of the one
`ErrorCode` set, and each is a `StrEnum`, which equals its plain string. So
one handler, comparing with `"OVERLOADED"`, serves every operation
(`is_retryable` below): a 503 `OVERLOADED` (past capacity) or
`SERVICE_UNAVAILABLE` (the database is down) means nothing was recorded or
changed, and the same request, with the same `Idempotency-Key`, may be sent
again after `Retry-After` seconds. A keyed request is also safe to resend
when the connection broke before the answer came: the key makes it happen
once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Protocol, TypeVar, runtime_checkable
from uuid import UUID

import httpx  # only for the timeout and the transport errors the generated client lets through

from flashstock_client import AuthenticatedClient
from flashstock_client.api.orders import cancel_order, create_order, get_order, pay_order
from flashstock_client.api.products import list_products as list_products_op
from flashstock_client.models import CreateOrder, Order, OrderEnvelope, OrderStatus, Product, ProductPageEnvelope
from flashstock_client.types import Response

T = TypeVar("T")

#: Longest `Prefer: wait=N` this example asks for; the api caps it at MAX_WAIT (30 s by default).
LONG_POLL = 10


def connect(base_url: str, token: str) -> AuthenticatedClient:
    """A client for one caller. Its read timeout leaves room for the long poll."""
    return AuthenticatedClient(base_url=base_url, token=token, timeout=httpx.Timeout(10.0, read=LONG_POLL + 10.0))


# --- errors -------------------------------------------------------------------


@runtime_checkable
class ErrorBody(Protocol):
    """`data` of any error answer: `CreateOrderErrorBody`, `PayOrderErrorBody`, ... and `ErrorBody`.

    `error` is that operation's own `StrEnum`, read here as the string it is.
    """

    @property
    def error(self) -> str: ...

    @property
    def message(self) -> str: ...


class FlashstockError(Exception):
    """An error answer of any operation, by its shared code."""

    def __init__(self, operation: str, status: int, code: str, message: str, retry_after: int | None) -> None:
        super().__init__(f"{operation}: {status} {code}: {message}")
        self.operation = operation
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @classmethod
    def of(cls, operation: str, response: Response[T]) -> FlashstockError:
        body = error_body(response)
        if body is not None:
            return cls(operation, response.status_code, str(body.error), body.message, retry_after(response))
        # Not an answer the spec lists (a proxy's 502, say): no code to go by.
        text = response.content[:200].decode(errors="replace")
        return cls(operation, response.status_code, "", text, retry_after(response))


def error_body(response: Response[T]) -> ErrorBody | None:
    """The error body of an answer: `data` of whichever `<Operation>ErrorEnvelope` it is."""
    body = getattr(response.parsed, "data", None)
    return body if isinstance(body, ErrorBody) else None


def is_retryable(body: ErrorBody) -> bool:
    """The one handler for every operation: `body.error` is a `CreateOrderErrorCode`,
    a `PayOrderErrorCode`, ...; each compares equal to the plain string."""
    return body.error == "OVERLOADED" or body.error == "SERVICE_UNAVAILABLE"


def retry_after(response: Response[T]) -> int | None:
    """The integer `Retry-After` of an answer, if any (httpx reads headers in any case).

    The generator does not type response headers: they are read from `response.headers`.
    """
    value = response.headers.get("Retry-After")
    return int(value) if value is not None and value.isdigit() else None


def send(
    operation: str,
    request: Callable[[], Response[T]],
    *,
    deadline: float = 30.0,
    on_retry: Callable[[Exception, int], None] | None = None,
) -> Response[T]:
    """Sends `request` until it is answered with a success, retrying for up to
    `deadline` seconds after a 503 that changed nothing (waiting its `Retry-After`)
    or a broken connection (waiting 1 s). Only for requests that are safe to
    repeat: reads, and writes with an `Idempotency-Key`. Raises `FlashstockError`
    for any other error answer. `on_retry(error, seconds)` is told of each retry.
    """
    give_up = time.monotonic() + deadline
    while True:
        error: Exception
        try:
            response = request()
        except httpx.TransportError as e:  # refused, reset, timed out: the key makes a resend safe
            error, delay = e, 1
        else:
            if response.status_code < 400:
                return response
            error = FlashstockError.of(operation, response)
            body = error_body(response)
            if body is None or not is_retryable(body):
                raise error
            delay = error.retry_after or 1
        if time.monotonic() + delay > give_up:
            raise error
        if on_retry is not None:
            on_retry(error, delay)
        time.sleep(delay)


def _order(operation: str, response: Response[T]) -> Order:
    if isinstance(response.parsed, OrderEnvelope):
        return response.parsed.data
    raise FlashstockError.of(operation, response)


# --- the storefront -----------------------------------------------------------


def list_products(client: AuthenticatedClient) -> list[Product]:
    """Every product, page by page."""
    products: list[Product] = []
    page = 1
    while True:
        response = send("list_products", lambda: list_products_op.sync_detailed(client=client, page=page, per_page=100))
        if not isinstance(response.parsed, ProductPageEnvelope):
            raise FlashstockError.of("list_products", response)
        products += response.parsed.data.items
        if page >= response.parsed.data.total_pages:
            return products
        page += 1


def place_order(
    client: AuthenticatedClient,
    product_id: int,
    total: int,
    key: str,
    *,
    deadline: float = 30.0,
    on_retry: Callable[[Exception, int], None] | None = None,
) -> Order:
    """Places an order as a buyer, with `Idempotency-Key: key` (16 to 255 visible
    ASCII characters; a random UUID is ideal).

    A 503 `OVERLOADED` or `SERVICE_UNAVAILABLE` recorded nothing: the same request,
    with the same key, is sent again after `Retry-After` seconds, until `deadline`.
    However many times it is sent, one order is made. Returns it as recorded
    (202): usually PENDING (see `wait_for_decision`), REJECTED when sold out.
    """
    body = CreateOrder(product_id=product_id, total=total)
    response = send(
        "create_order",
        lambda: create_order.sync_detailed(client=client, body=body, idempotency_key=key),
        deadline=deadline,
        on_retry=on_retry,
    )
    return _order("create_order", response)


def wait_for_decision(client: AuthenticatedClient, order_id: UUID, *, wait: int = LONG_POLL, deadline: float = 60.0) -> Order:
    """Reads the order until it is decided. `Prefer: wait=N` makes each read a
    long poll, answered the moment the order is decided; an answer still PENDING
    (the wait ran out, or the api had no waiting slot free) comes with
    `Retry-After`, slept before asking again."""
    give_up = time.monotonic() + deadline
    while True:
        response = send("get_order", lambda: get_order.sync_detailed(order_id, client=client, prefer=f"wait={wait}"))
        order = _order("get_order", response)
        if order.status != OrderStatus.PENDING:
            return order
        delay = retry_after(response) or 1
        if time.monotonic() + delay > give_up:
            raise TimeoutError(f"order {order_id} still PENDING after {deadline} s")
        time.sleep(delay)


def pay(payment_client: AuthenticatedClient, order_id: UUID, key: str | None = None) -> Order:
    """Pays an ACCEPTED order as the payment service (PAYMENT_TOKEN): PAID.
    Keyed, so a retry after a lost answer pays once."""
    key = key or str(uuid.uuid4())
    response = send("pay_order", lambda: pay_order.sync_detailed(order_id, client=payment_client, idempotency_key=key))
    return _order("pay_order", response)


def cancel(buyer_client: AuthenticatedClient, order_id: UUID, key: str | None = None) -> Order:
    """Cancels one's own PENDING or ACCEPTED order: CANCELLED, its units released."""
    key = key or str(uuid.uuid4())
    response = send("cancel_order", lambda: cancel_order.sync_detailed(order_id, client=buyer_client, idempotency_key=key))
    return _order("cancel_order", response)
