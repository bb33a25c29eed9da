"""Local stand-ins of Stripe and Salesforce, for `stripe-sf demo` and the tests."""
