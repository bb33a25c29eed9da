"""The Salesforce edge: the gateway (SOQL paging, retries), lookups, writers and the org check."""
