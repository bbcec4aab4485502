"""``python -m eventkit.shop.demo``: the example shop under a realistic workload.

Every run records into a fresh schema, so runs never mix, and tells one story, a module
per part, in this order:

- :mod:`.catalogue`: the stock items, registered and stocked up;
- :mod:`.workload`: concurrent writer threads placing, paying, cancelling and shipping
  orders, with commands that must be rejected;
- :mod:`.progress`: how far along the workload is (a bar on a terminal, lines elsewhere);
- :mod:`.projections`: the projection workers in threads beside the writers, each view's
  lag while they write and until it drains;
- :mod:`.summary`: what was written, counted in the database, and the stock invariant;
- :mod:`.readmodels`: query results from the views, checked against the event store, and
  read-your-writes;
- :mod:`.deadletters`: a demo projection that fails on purpose for one order, whose events
  are parked and then retried in order;
- :mod:`.metrics`: figures read back from the workers' Prometheus endpoint;
- :mod:`.reactions`: the payment process through a gateway that fails and recovers;
- :mod:`.ending`: how to look at what the demo made, and its schema dropped or kept.

:mod:`.main` is the command line and tells the story; :mod:`.cli` runs ``eventkit``
commands in the demo's process, as an operator would.
"""

from eventkit.shop.demo.main import main

__all__ = ["main"]
