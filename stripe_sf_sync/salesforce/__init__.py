"""The Salesforce edge, behind the batch step's ports (pipeline/ports.py); its data are plain types (records.py).

  gateway.py   SalesforceGateway: the session, API usage, the one SOQL pager, Composite reads, one Collections call
  retry.py     what a failure means (the one table) and the one RetryPolicy
  lookups.py   finding records: intents -> LookupRequest -> batched SOQL -> Lookups; SalesforceRecords (RecordLookup)
  writers.py   CollectionsWriter, BulkWriter (Bulk API 2.0), LazyWriter (RecordWriters)
  recorder.py  PlanRecorder: the dry run's RecordWriter, which records the plan and sends nothing
  org.py       the org check: what the org must have, once a day through describe
"""
