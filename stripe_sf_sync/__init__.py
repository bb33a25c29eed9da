"""stripe-sf: keep Salesforce true to what Stripe has actually collected."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("stripe-sf-sync")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0"
