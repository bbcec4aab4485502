"""The demo's catalogue: the stock items the writers order, and the stock received first."""

from __future__ import annotations

from decimal import Decimal

from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.commands import ReceiveStock, RegisterStockItem

#: (sku, name, unit price, popularity): popular items run short and collide more often.
CATALOGUE: tuple[tuple[str, str, str, int], ...] = (
    ("TEA-GREEN", "Sencha green tea, 100 g", "6.90", 9),
    ("TEA-BLACK", "Assam black tea, 250 g", "8.50", 8),
    ("TEA-EARL", "Earl Grey, 100 g", "5.75", 6),
    ("COF-BEANS", "Espresso beans, 1 kg", "21.00", 10),
    ("COF-GROUND", "Filter coffee, 500 g", "9.40", 5),
    ("MUG-WHITE", "Stoneware mug, white", "12.00", 4),
    ("MUG-BLUE", "Stoneware mug, blue", "12.00", 3),
    ("POT-1L", "Glass teapot, 1 l", "29.90", 2),
    ("KETTLE-GOOSE", "Gooseneck kettle", "54.00", 2),
    ("FILTER-100", "Paper filters, 100 pcs", "3.20", 4),
    ("GRINDER-HAND", "Hand grinder", "39.00", 1),
    ("SCALE-01", "Brewing scale", "24.50", 1),
    ("HONEY-500", "Acacia honey, 500 g", "7.80", 3),
    ("SUGAR-CUBES", "Cane sugar cubes, 1 kg", "2.90", 2),
    ("BISCUIT-ALM", "Almond biscuits", "4.10", 5),
    ("CHOC-DARK", "Dark chocolate, 70%", "3.60", 6),
    ("CUP-SET-6", "Espresso cups, set of 6", "32.00", 1),
    ("INFUSER-01", "Tea infuser", "4.90", 2),
    ("GIFT-BOX", "Gift box", "15.00", 2),
    ("LTD-MATCHA", "Limited edition matcha, 30 g", "18.00", 6),
)
#: How many lines an order has, and how many units a line asks for, with their weights.
LINES = ((1, 2, 3, 4), (50, 30, 15, 5))
UNITS = ((1, 2, 3, 4), (3, 2, 1, 1))


def stock_up(shop: Shop, orders: int) -> int:
    """Register the catalogue and receive about 70% of what the orders will ask for."""
    total_weight = sum(weight for *_, weight in CATALOGUE)
    demand = orders * _mean(*LINES) * _mean(*UNITS)
    units = 0
    for sku, name, price, weight in CATALOGUE:
        shop.register_stock_item(RegisterStockItem(sku=sku, name=name, unit_price=Decimal(price)))
        # The limited edition runs out early, so some orders for it are rejected.
        share = 0.15 if sku.startswith("LTD-") else 0.7
        quantity = max(10, int(demand * weight / total_weight * share))
        shop.receive_stock(ReceiveStock(sku=sku, quantity=quantity))
        units += quantity
    return units


def _mean(values: tuple[int, ...], weights: tuple[int, ...]) -> float:
    return sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)
