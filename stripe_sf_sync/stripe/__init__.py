"""The Stripe edge: the client (client.py, with pacing.py and http.py: pacing, retries, paging), event and list
reads (events.py, lists.py, objects.py), and hydration (hydrator.py, with its caches in caches.py); source.py
composes them into one run's `StripeSource`."""
