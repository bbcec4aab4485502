"""The library, declared for eventkit: what `eventkit` commands and workers run.

pyproject.toml names it (``[tool.eventkit] app = "service:app"``).
"""

from eventkit import App

from domain.library import Library
from service.loans import Loans
from service.receipts import LoanReceipts

app = App(
    "library",
    applications=[Library],
    projections=[Loans],
    reactions=[LoanReceipts],
    settings={"LIBRARY_BRANCHES": "the branches with a receipt printer (default: main)"},
)
