"""The example shop: its read models, its reactions, and its declaration for eventkit.

``app`` is what ``eventkit --app eventkit.projections.shop:app`` loads (this repository's
pyproject.toml names it, so ``eventkit`` commands run here know the shop).
"""

from __future__ import annotations

from eventkit.domain.shop.application import Shop
from eventkit.projections.app import App
from eventkit.projections.shop.order_summaries import OrderSummaries, OrderSummaryQueries
from eventkit.projections.shop.reactions import ChargePayments, OrderMails, ShipPaidOrders
from eventkit.projections.shop.revenue import RevenueByDay, RevenueQueries
from eventkit.projections.shop.stock_levels import StockLevelQueries, StockLevels

app = App(
    "shop",
    applications=[Shop],
    projections=[OrderSummaries, StockLevels, RevenueByDay],
    reactions=[ChargePayments, ShipPaidOrders, OrderMails],
    settings={
        "PAYMENT_GATEWAY_URL": "the payment gateway charge_payments calls (unset: a sandbox "
        "that captures every payment)"
    },
)

__all__ = [
    "ChargePayments",
    "OrderMails",
    "OrderSummaries",
    "OrderSummaryQueries",
    "RevenueByDay",
    "RevenueQueries",
    "ShipPaidOrders",
    "StockLevelQueries",
    "StockLevels",
    "app",
]
