"""`python -m stripe_sf_sync`."""

from stripe_sf_sync.cli import main

main()
