"""The Stripe edge: the client (pacing, retries, paging), event and list reads, and hydration."""
