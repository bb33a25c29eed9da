"""stripe-sf: keep Salesforce true to what Stripe has actually collected."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """`__version__`, read from the installed metadata when asked for: importlib.metadata takes a tenth of the
    start time of a command that never shows it (PEP 562 module __getattr__)."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stripe-sf-sync")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0.0.0"
