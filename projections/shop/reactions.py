"""The example shop's reactions: the payment process and the customer mails.

An order is placed with its stock reserved and its payment requested in one command. From
there the process runs on reactions:

- ``charge_payments``: a requested payment is charged at the payment gateway (an HTTP
  service), with the message id as the idempotency key; the gateway's answer captures or
  fails the payment (a command on the Payment and Order aggregates, and for a decline on
  the StockItems, whose reservations are released);
- ``ship_paid_orders``: a paid order is shipped (Order and StockItem aggregates);
- ``order_mails``: a shipped or cancelled order gets a mail, written to the ``order_mails``
  table in the ledger's transaction: exactly once.

Commands are checked against the aggregate's state first: a redelivered message finds the
payment captured or the order shipped and does nothing.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any, Protocol

from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import CapturePayment, FailPayment, ShipOrder
from eventkit.domain.shop.orders import Order, OrderStatus
from eventkit.domain.shop.payments import Payment, PaymentStatus
from eventkit.projections.app import Runtime
from eventkit.projections.projection import Table, handles
from eventkit.projections.reaction import Reaction, ReactionContext

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    """The payment gateway did not answer, or answered with an error."""


class PaymentGatewayClient:
    """Charges payments at an HTTP payment gateway: ``POST {url}/charges``."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def charge(self, payment: Payment.Requested, idempotency_key: str) -> dict[str, Any]:
        """The gateway's decision: ``{"status": "captured"}`` or ``{"status": "declined",
        "reason": ...}``. Raises :class:`GatewayError` when there is none."""
        body = json.dumps(
            {
                "payment_id": str(payment.originator_id),
                "order_id": str(payment.order_id),
                "amount": str(payment.amount),
                "currency": payment.currency.value,
            }
        ).encode()
        request = urllib.request.Request(
            f"{self.url}/charges",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "Idempotency-Key": idempotency_key},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise GatewayError(
                f"payment gateway {self.url} answered {e.code} for payment "
                f"{payment.originator_id} (idempotency key {idempotency_key})"
            ) from e
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise GatewayError(
                f"payment gateway {self.url} unreachable for payment {payment.originator_id}: {e}"
            ) from e
        if answer.get("status") not in {"captured", "declined"}:
            raise GatewayError(f"payment gateway {self.url} answered {answer!r}")
        return answer


class Gateway(Protocol):
    """What charges a payment: the HTTP gateway's client, or the sandbox."""

    def charge(self, payment: Payment.Requested, idempotency_key: str) -> dict[str, Any]: ...


class SandboxGateway:
    """Captures every payment without calling anything: what charge_payments uses when
    PAYMENT_GATEWAY_URL is unset, so the example runs on a machine with no gateway."""

    def charge(self, payment: Payment.Requested, idempotency_key: str) -> dict[str, Any]:
        return {"status": "captured"}


class ChargePayments(Reaction):
    """Charges each requested payment, then captures or fails it."""

    name = "charge_payments"
    max_attempts = 5
    min_backoff_ms = 200
    max_backoff_ms = 10_000
    #: The shop's payment process: payments requested before the reaction first ran are
    #: still charged (a reaction starts at the head of the log unless it says otherwise).
    start_from = "origin"

    def __init__(self, shop: Shop, gateway: Gateway) -> None:
        self.shop = shop
        self.gateway = gateway

    @classmethod
    def construct(cls, runtime: Runtime) -> ChargePayments:
        url = runtime.setting("PAYMENT_GATEWAY_URL")
        if url:
            return cls(runtime.application(Shop), PaymentGatewayClient(url))
        logger.warning(
            "reaction %s: PAYMENT_GATEWAY_URL is unset, so payments are captured by the "
            "sandbox gateway (nothing is called); set it to charge a real gateway",
            cls.name,
        )
        return cls(runtime.application(Shop), SandboxGateway())

    @handles
    def requested(self, event: Payment.Requested, context: ReactionContext) -> None:
        payment_id = event.originator_id
        if self.shop.get_payment(payment_id).status is not PaymentStatus.REQUESTED:
            return  # decided already (a redelivery, or the order was cancelled)
        answer = self.gateway.charge(event, str(context.message_id))
        if self.shop.get_payment(payment_id).status is not PaymentStatus.REQUESTED:
            return  # cancelled while the gateway answered
        if answer["status"] == "captured":
            self.shop.capture_payment(CapturePayment(payment_id=payment_id))
        else:
            reason = str(answer.get("reason") or "declined by the gateway")
            self.shop.fail_payment(FailPayment(payment_id=payment_id, reason=reason))


class ShipPaidOrders(Reaction):
    """Ships each paid order."""

    name = "ship_paid_orders"
    start_from = "origin"

    def __init__(self, shop: Shop) -> None:
        self.shop = shop

    @classmethod
    def construct(cls, runtime: Runtime) -> ShipPaidOrders:
        return cls(runtime.application(Shop))

    @handles
    def paid(self, event: Order.Paid, context: ReactionContext) -> None:
        if self.shop.get_order(event.originator_id).status is OrderStatus.PAID:
            self.shop.ship_order(ShipOrder(order_id=event.originator_id))


class OrderMails(Reaction):
    """Writes the customer's mail for each shipped or cancelled order, exactly once."""

    name = "order_mails"
    tables = (
        Table(
            "order_mails",
            "CREATE TABLE {table} (message_id uuid PRIMARY KEY, order_id uuid NOT NULL,"
            " kind text NOT NULL, body text NOT NULL,"
            " sent_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        ),
    )

    @handles
    def shipped(self, event: Order.Shipped, context: ReactionContext) -> None:
        self._mail(context, event.originator_id, "shipped", "Your order is on its way.")

    @handles
    def cancelled(self, event: Order.Cancelled, context: ReactionContext) -> None:
        self._mail(context, event.originator_id, "cancelled", f"Order cancelled: {event.reason}.")

    @staticmethod
    def _mail(context: ReactionContext, order_id: Any, kind: str, body: str) -> None:
        context.execute(
            "INSERT INTO {order_mails} (message_id, order_id, kind, body) VALUES (%s, %s, %s, %s)",
            (context.message_id, order_id, kind, body),
        )
