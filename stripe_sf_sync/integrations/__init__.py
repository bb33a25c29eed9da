"""Ways to run stripe-sf on an engine a team already operates (issue 26): each an optional extra, built on the
service layer as the CLI is."""
