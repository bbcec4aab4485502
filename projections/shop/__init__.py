"""The example shop's read models."""

from __future__ import annotations

from eventkit.projections.projection import Projection
from eventkit.projections.shop.order_summaries import OrderSummaries, OrderSummaryQueries
from eventkit.projections.shop.revenue import RevenueByDay, RevenueQueries
from eventkit.projections.shop.stock_levels import StockLevelQueries, StockLevels

#: Every projection `eventkit workers` runs by default, by name.
PROJECTIONS: dict[str, type[Projection]] = {
    p.name: p for p in (OrderSummaries, StockLevels, RevenueByDay)
}

__all__ = [
    "PROJECTIONS",
    "OrderSummaries",
    "OrderSummaryQueries",
    "RevenueByDay",
    "RevenueQueries",
    "StockLevelQueries",
    "StockLevels",
]
