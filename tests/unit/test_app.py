"""An application's declaration, and how commands find it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventkit.domain.shop.application import Shop
from eventkit.domain.shop.orders import Order
from eventkit.infrastructure.errors import ConfigurationError
from eventkit.infrastructure.settings import Settings
from eventkit.loading import AppNotFoundError, find_spec, load_app
from eventkit.projections.app import App, Runtime, UnknownConsumerError
from eventkit.projections.projection import Context, Projection, handles
from eventkit.projections.shop import OrderMails, OrderSummaries, ShipPaidOrders
from eventkit.projections.shop import app as shop


class Paid(Projection):
    name = "paid"

    @handles
    def paid(self, event: Order.Paid, context: Context) -> None:
        pass


def test_the_shop_is_one_declared_application() -> None:
    assert shop.names() == [
        "order_summaries",
        "stock_levels",
        "revenue_by_day",
        "charge_payments",
        "ship_paid_orders",
        "order_mails",
    ]
    assert shop.consumer("order_mails") is OrderMails
    assert shop.select(["order_summaries", "order_mails"]) == ([OrderSummaries], [OrderMails])
    assert "PAYMENT_GATEWAY_URL" in shop.settings


def test_an_unknown_name_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(UnknownConsumerError) as caught:
        shop.select(["order_summaries", "nosuch"])
    message = str(caught.value)
    assert "application 'shop' has no projection or reaction 'nosuch'" in message
    assert "projections: order_summaries, stock_levels, revenue_by_day" in message
    assert "reactions: charge_payments, ship_paid_orders, order_mails" in message


def test_a_declaration_is_checked_when_it_is_made() -> None:
    class AlsoPaid(Paid):
        pass

    with pytest.raises(ConfigurationError, match="both named 'paid'"):
        App("twice", projections=[Paid, AlsoPaid])
    with pytest.raises(ConfigurationError, match="is not a Projection class"):
        App("wrong", projections=[OrderMails])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="is not an eventkit Application class"):
        App("wrong", applications=[object])  # type: ignore[list-item]

    class Empty(Projection):
        name = "empty"

    with pytest.raises(ConfigurationError, match=r"Empty \(empty\) has no handlers"):
        App("empty", projections=[Empty])


def test_a_consumer_gets_its_services_from_the_runtime() -> None:
    runtime = Runtime(shop, Settings(database_url="postgresql://unused"), environ={})
    assert runtime.setting("PAYMENT_GATEWAY_URL") is None
    assert runtime.setting("PAYMENT_GATEWAY_URL", "x") == "x"
    with_env = App("e", projections=[Paid], env={"GREETING": "hello"})
    runtime = Runtime(with_env, Settings(database_url="postgresql://unused"), {"OTHER": "1"})
    assert runtime.setting("GREETING") == "hello"
    runtime = Runtime(with_env, Settings(database_url="postgresql://unused"), {"GREETING": "hi"})
    assert runtime.setting("GREETING") == "hi"  # the process environment wins


# -- loading -------------------------------------------------------------------------------


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Path]:
    """A service's folder with its own package declaring an application."""
    package = tmp_path / "myservice"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "wiring.py").write_text(
        "from eventkit import App\n"
        "from tests.unit.test_app import Paid\n"
        "app = App('mine', projections=[Paid])\n"
        "not_an_app = 42\n"
    )
    yield tmp_path
    for name in [m for m in sys.modules if m == "myservice" or m.startswith("myservice.")]:
        del sys.modules[name]
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_the_app_is_found_by_flag_then_environment_then_pyproject(service: Path) -> None:
    (service / "pyproject.toml").write_text('[tool.eventkit]\napp = "myservice.wiring:app"\n')
    nested = service / "deeper" / "still"
    nested.mkdir(parents=True)
    found = find_spec(None, environ={}, cwd=nested)
    assert found is not None
    assert (found.spec, found.directory) == ("myservice.wiring:app", service)
    assert load_app(None, environ={}, cwd=nested).name == "mine"
    from_env = find_spec(None, environ={"EVENTKIT_APP": "x.y:z"}, cwd=nested)
    assert from_env is not None
    assert from_env.source == "EVENTKIT_APP"
    from_flag = find_spec("a.b:c", environ={"EVENTKIT_APP": "x.y:z"}, cwd=nested)
    assert from_flag is not None
    assert from_flag.spec == "a.b:c"


def test_what_is_wrong_with_a_named_app_is_said(service: Path) -> None:
    cases = {
        "myservice.wiring": "expected module:attribute",
        "myservice.nosuch:app": "module 'myservice.nosuch' is not found",
        "myservice.wiring:nosuch": "has no attribute 'nosuch'",
        "myservice.wiring:not_an_app": "which is a int, not an eventkit.App",
    }
    for spec, message in cases.items():
        with pytest.raises(AppNotFoundError, match=message):
            load_app(spec, environ={}, cwd=service)


def test_with_no_app_named_the_error_says_how_to_name_one(tmp_path: Path) -> None:
    with pytest.raises(AppNotFoundError, match=r"--app module:attribute, the EVENTKIT_APP"):
        load_app(None, environ={}, cwd=tmp_path)


def test_shop_reactions_build_their_services_from_the_runtime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[object] = []

    class FakeRuntime:
        def application(self, cls: type[object]) -> object:
            built.append(cls)
            return object.__new__(cls)

    reaction = ShipPaidOrders.construct(FakeRuntime())  # type: ignore[arg-type]
    assert isinstance(reaction, ShipPaidOrders)
    assert built == [Shop]
