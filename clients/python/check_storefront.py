"""CI harness for storefront.py (not an example): runs the storefront against a
live api and worker, on a database and broker namespace of its own.

    FLASHSTOCK_BIN_DIR=target/debug PYTHONPATH=<folder holding flashstock_client> \
        python clients/python/check_storefront.py

It starts the api and worker binaries in $FLASHSTOCK_BIN_DIR (what
scripts/check-clients.sh passes: cargo's debug folder) with buyers' JWTs, a payment and an admin token,
and ADMISSION_MAX_DELAY=2s, then through storefront.py:
  a. the admin creates a product with 5 units;
  b. a buyer lists products, places a keyed order, waits for it (long poll):
     ACCEPTED; the payment service pays it: PAID;
  c. the buyer places another, waits: ACCEPTED, cancels it: CANCELLED;
  d. long-poll latency: with the worker paused (SIGSTOP) an order stays
     PENDING; a `GET /api/orders/{id}` with `Prefer: wait=5` is sent, the
     worker resumed a second later, and the answer must be the decided order,
     arriving less than 100 ms after its `decided_at` (one machine, one clock);
  e. overload: with the worker paused, an order left undecided for longer than
     half of ADMISSION_MAX_DELAY stalls its partition, so the api sheds new
     orders for it with 503 OVERLOADED; `place_order` with key K retries after
     Retry-After, the worker is resumed at its first 503, and it must end with
     one order for K (placing again with K replays it);
  f. the invariants hold.
Whatever happens, it stops both processes, drops the database and deletes the
namespace's queues; on a failure it prints both logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

import httpx

import storefront as sf
from flashstock_client import AuthenticatedClient, Client
from flashstock_client.api.admin import get_invariants
from flashstock_client.api.health import get_ready
from flashstock_client.api.orders import create_order, get_order, list_orders
from flashstock_client.api.products import create_product
from flashstock_client.models import (
    CreateOrder,
    CreateProduct,
    InvariantReportEnvelope,
    Order,
    OrderEnvelope,
    OrderPageEnvelope,
    OrderStatus,
    ProductEnvelope,
)
from flashstock_client.types import Response, Unset

LATENCY_BOUND_MS = 100.0
ADMISSION_MAX_DELAY_S = 2.0


class CheckFailed(Exception):
    pass


def check(condition: bool, what: str) -> None:
    if not condition:
        raise CheckFailed(what)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_jwt(secret: str, sub: str, ttl: int = 3600) -> str:
    """An HS256 buyer's token: `sub` is the buyer, `exp` required (no iss/aud unless configured)."""
    now = int(time.time())
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sub": sub, "iat": now, "exp": now + ttl}).encode())
    signature = hmac.new(secret.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64url(signature)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def new_key() -> str:
    return str(uuid.uuid4())


@dataclass
class Proc:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    stopped: bool = False

    def pause(self) -> None:
        self.process.send_signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        if self.stopped:
            self.process.send_signal(signal.SIGCONT)
            self.stopped = False


@dataclass
class System:
    name: str
    base_url: str
    bins: Path
    logs: Path
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    def start(self, binary: str) -> Proc:
        path = self.bins / binary
        log = self.logs / f"{binary}.log"
        out: IO[bytes] = log.open("wb")
        # In the log folder: no `.env` of a clone is read.
        process = subprocess.Popen([str(path)], env=self.env, cwd=self.logs, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        proc = Proc(binary, process, log)
        self.procs.append(proc)
        return proc

    def wait_ready(self, api: Proc, timeout: float = 60.0) -> None:
        client = Client(base_url=self.base_url, timeout=None)
        give_up = time.monotonic() + timeout
        while True:
            check(api.process.poll() is None, f"the api exited with {api.process.returncode}")
            try:
                if get_ready.sync_detailed(client=client).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            check(time.monotonic() < give_up, f"/readyz did not answer 200 within {timeout:.0f} s")
            time.sleep(0.1)

    def stop(self) -> list[str]:
        """SIGTERM to each process (resumed first), SIGKILL after 20 s; what happened."""
        notes = []
        for proc in self.procs:
            if proc.process.poll() is None:
                proc.resume()
                proc.process.terminate()
        for proc in self.procs:
            try:
                code = proc.process.wait(timeout=20)
                notes.append(f"{proc.name} exited with {code}")
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait()
                notes.append(f"{proc.name} did not stop on SIGTERM within 20 s: killed")
        return notes

    def remove_data(self) -> None:
        subprocess.run(
            ["mysql", "--protocol=TCP", "-h", "127.0.0.1", "-u", "root", "-e", f"DROP DATABASE IF EXISTS `{self.name}`"],
            check=False,
        )
        listed = subprocess.run(["rabbitmqctl", "list_queues", "-q", "name"], capture_output=True, text=True, check=False)
        queues = [q for q in listed.stdout.split() if q.startswith(f"{self.name}.")]
        deletions = [
            subprocess.Popen(["rabbitmqctl", "delete_queue", q], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for q in queues
        ]
        for d in deletions:
            d.wait()


def print_logs(system: System, lines: int = 300) -> None:
    for proc in system.procs:
        text = proc.log.read_text(errors="replace").splitlines()
        print(f"----- {proc.name} log ({proc.log}), last {min(lines, len(text))} of {len(text)} lines")
        print("\n".join(text[-lines:]))


def storefront_flow(system: System, worker: Proc, tokens: dict[str, str]) -> dict[str, float]:
    base = system.base_url
    admin = sf.connect(base, tokens["admin"])
    payments = sf.connect(base, tokens["payment"])
    buyer = sf.connect(base, tokens["buyer"])
    figures: dict[str, float] = {}

    # a. The admin creates a product with 5 units (keyed, so retried safely): one
    # paid, one cancelled, and three accepted in d and e.
    body = CreateProduct(name="Kaos Polos", stock=5)
    key = new_key()
    created = sf.send("create_product", lambda: create_product.sync_detailed(client=admin, body=body, idempotency_key=key))
    check(isinstance(created.parsed, ProductEnvelope), f"create_product answered {created.status_code}")
    assert isinstance(created.parsed, ProductEnvelope)
    product = created.parsed.data
    print(f"a. product {product.id} created with 5 units")

    # b. Buy and pay.
    listed = sf.list_products(buyer)
    check(any(p.id == product.id for p in listed), f"product {product.id} not listed: {listed}")
    first = sf.place_order(buyer, product.id, 1, key=new_key())
    first = sf.wait_for_decision(buyer, first.id, deadline=30)
    check(first.status == OrderStatus.ACCEPTED, f"first order {first.status}, not ACCEPTED")
    paid = sf.pay(payments, first.id)
    check(paid.status == OrderStatus.PAID, f"paid order is {paid.status}")
    print(f"b. {len(listed)} product(s) listed; order {first.id} ACCEPTED, then PAID")

    # c. Buy and cancel.
    second = sf.place_order(buyer, product.id, 1, key=new_key())
    second = sf.wait_for_decision(buyer, second.id)
    check(second.status == OrderStatus.ACCEPTED, f"second order {second.status}, not ACCEPTED")
    cancelled = sf.cancel(buyer, second.id)
    check(cancelled.status == OrderStatus.CANCELLED, f"cancelled order is {cancelled.status}")
    print(f"c. order {second.id} ACCEPTED, then CANCELLED")

    # d. The long poll answers as soon as the order is decided.
    worker.pause()
    third = sf.place_order(buyer, product.id, 1, key=new_key())
    check(third.status == OrderStatus.PENDING, f"with the worker paused the order is {third.status}")
    polled: dict[str, object] = {}

    def long_poll() -> None:
        try:
            polled["sent"] = time.time()
            polled["response"] = get_order.sync_detailed(third.id, client=buyer, prefer="wait=5")
            polled["arrived"] = time.time()
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            polled["error"] = e

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(1.0)
    worker.resume()
    poller.join(timeout=15)
    check(not poller.is_alive(), "the long poll did not return within 15 s")
    check("error" not in polled, f"the long poll failed: {polled.get('error')!r}")
    response = polled["response"]
    assert isinstance(response, Response)
    check(response.status_code == 200, f"the long poll answered {response.status_code}")
    check(isinstance(response.parsed, OrderEnvelope), "the long poll's answer is not an order")
    assert isinstance(response.parsed, OrderEnvelope)
    decided = response.parsed.data
    check(decided.status != OrderStatus.PENDING, "the long poll answered PENDING: it did not wait for the decision")
    check(not isinstance(decided.decided_at, Unset), "a decided order without decided_at")
    assert not isinstance(decided.decided_at, Unset)
    arrived, sent = polled["arrived"], polled["sent"]
    assert isinstance(arrived, float) and isinstance(sent, float)
    latency_ms = (arrived - decided.decided_at.timestamp()) * 1000
    held_s = arrived - sent
    figures["long_poll_latency_ms"] = latency_ms
    print(
        f"d. long poll held {held_s:.2f} s, answered {decided.status} {latency_ms:.1f} ms after decided_at "
        f"(bound {LATENCY_BOUND_MS:.0f} ms; Preference-Applied: {response.headers.get('Preference-Applied')})"
    )
    check(held_s > 0.8, f"the long poll returned after {held_s:.2f} s, before the worker was resumed")
    check(0 <= latency_ms < LATENCY_BOUND_MS, f"the long poll answered {latency_ms:.1f} ms after decided_at")

    # e. Past capacity: a stalled partition sheds; place_order retries with the same key.
    worker.pause()
    blocker = sf.place_order(buyer, product.id, 1, key=new_key())
    check(blocker.status == OrderStatus.PENDING, f"with the worker paused the blocker is {blocker.status}")
    time.sleep(ADMISSION_MAX_DELAY_S / 2 + 0.5)  # its partition is now stalled
    k = new_key()
    retries: list[tuple[Exception, int]] = []
    first_retry = threading.Event()

    def on_retry(error: Exception, delay: int) -> None:
        retries.append((error, delay))
        first_retry.set()

    placed: dict[str, object] = {}

    def place() -> None:
        try:
            placed["order"] = sf.place_order(buyer, product.id, 1, key=k, deadline=30, on_retry=on_retry)
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            placed["error"] = e

    placer = threading.Thread(target=place)
    placer.start()
    saw_503 = first_retry.wait(timeout=10)
    worker.resume()
    placer.join(timeout=40)
    check(saw_503, "no 503 while the partition was stalled: place_order never retried")
    check(not placer.is_alive(), "place_order did not return within 40 s")
    check("error" not in placed, f"place_order failed: {placed.get('error')!r}")
    order_k = placed["order"]
    assert isinstance(order_k, Order)
    overloaded = [(e, d) for e, d in retries if isinstance(e, sf.FlashstockError) and e.code == "OVERLOADED"]
    check(len(overloaded) >= 1, f"no OVERLOADED among the retries: {retries}")
    figures["overload_retries"] = len(retries)
    # The same key again: the same order, replayed; nothing new recorded.
    again = create_order.sync_detailed(
        client=buyer, body=CreateOrder(product_id=product.id, total=1), idempotency_key=k
    )
    check(again.status_code in (201, 202), f"placing again with K answered {again.status_code}")
    assert isinstance(again.parsed, OrderEnvelope)
    check(again.parsed.data.id == order_k.id, f"K made two orders: {order_k.id} and {again.parsed.data.id}")
    check(again.headers.get("Idempotent-Replayed") == "true", "the replay with K lacks Idempotent-Replayed: true")
    listed_orders = list_orders.sync_detailed(client=admin, product_id=product.id, per_page=100)
    assert isinstance(listed_orders.parsed, OrderPageEnvelope)
    ids = [o.id for o in listed_orders.parsed.data.items]
    expected = [first.id, second.id, third.id, blocker.id, order_k.id]
    check(sorted(map(str, ids)) == sorted(map(str, expected)), f"orders recorded {ids}, expected {expected}")
    blocker = sf.wait_for_decision(buyer, blocker.id)
    order_k = sf.wait_for_decision(buyer, order_k.id)
    check(blocker.status == OrderStatus.ACCEPTED, f"blocker {blocker.status}")
    check(order_k.status == OrderStatus.ACCEPTED, f"order K {order_k.status}")
    print(
        f"e. shed while stalled: {len(retries)} retr{'y' if len(retries) == 1 else 'ies'} "
        f"({len(overloaded)} OVERLOADED, Retry-After {[d for _, d in overloaded]} s); "
        f"one order {order_k.id} for K, replayed with Idempotent-Replayed: true; ACCEPTED"
    )

    # f. The invariants hold.
    report = get_invariants.sync_detailed(client=admin)
    check(isinstance(report.parsed, InvariantReportEnvelope), f"invariants answered {report.status_code}")
    assert isinstance(report.parsed, InvariantReportEnvelope)
    check(report.parsed.data.ok, f"invariant violations: {report.parsed.data.violations}")
    print("f. invariants ok")
    return figures


def main() -> int:
    name = f"fs_test_storefront_{os.getpid()}"
    port = free_port()
    bins = Path(os.environ["FLASHSTOCK_BIN_DIR"])
    missing = [b for b in ("api", "worker") if not (bins / b).is_file()]
    if missing:
        print(f"FAILED: no {' and no '.join(missing)} binary in {bins}: build them first (cargo build --bins)")
        return 1
    tokens = {"admin": secrets.token_hex(32), "payment": secrets.token_hex(32)}
    jwt_secret = secrets.token_hex(32)
    tokens["buyer"] = mint_jwt(jwt_secret, "storefront-buyer")
    # Only what the binaries need: nothing of the caller's flashstock settings leaks in.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "RUST_LOG", "RUST_BACKTRACE")}
    env.update(
        DATABASE_URL=f"mysql://root@127.0.0.1:3306/{name}",
        AMQP_URL=os.environ.get("AMQP_URL") or "amqp://guest:guest@127.0.0.1:5672/%2f",
        BROKER_NAMESPACE=name,
        ORDER_PARTITIONS="4",  # fewer queues to delete afterwards
        API_ADDR=f"127.0.0.1:{port}",
        WORKER_METRICS_ADDR="127.0.0.1:0",
        ADMIN_TOKEN=tokens["admin"],
        PAYMENT_TOKEN=tokens["payment"],
        BUYER_JWT_SECRET=jwt_secret,
        ADMISSION_MAX_DELAY=f"{ADMISSION_MAX_DELAY_S:g}s",
    )
    logs = Path(tempfile.mkdtemp(prefix="flashstock-storefront."))
    system = System(name, f"http://127.0.0.1:{port}", bins, logs, env)

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    print(f"api and worker from {bins} (built {time.ctime((bins / 'api').stat().st_mtime)}); database and namespace {name}")
    ok = False
    figures: dict[str, float] = {}
    try:
        api = system.start("api")
        system.wait_ready(api)
        worker = system.start("worker")
        figures = storefront_flow(system, worker, tokens)
        ok = True
    except Exception:  # noqa: BLE001 - any failure: say what, then clean up
        traceback.print_exc()
    finally:
        notes = system.stop()
        system.remove_data()
        print("; ".join(notes))
        if ok:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            print_logs(system)
    if not ok:
        print("FAILED: the storefront flow (above)")
        return 1
    print(
        f"ok -- storefront: bought and paid, bought and cancelled; long poll answered "
        f"{figures['long_poll_latency_ms']:.1f} ms after the decision; "
        f"{figures['overload_retries']:.0f} retr{'y' if figures['overload_retries'] == 1 else 'ies'} past OVERLOADED, one order"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
