"""`stripe-sf setup`: create the custom fields and the permission set the sync needs, through one Metadata API
deployment (plan.py compares, package.py builds the zip or the Salesforce DX project, deploy.py sends it, run.py
ties them together for the CLI)."""
