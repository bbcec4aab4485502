"""The library, declared for eventkit: what `eventkit` commands and workers run.

pyproject.toml names it (``[tool.eventkit] app = "service:app"``).
"""

from domain.library import Library

from eventkit import App
from service.loans import Loans
from service.receipts import LoanReceipts

app = App(
    "library",
    applications=[Library],
    projections=[Loans],
    reactions=[LoanReceipts],
    settings={"LIBRARY_BRANCHES": "the branches with a receipt printer (default: main)"},
)
