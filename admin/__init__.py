"""sessions-admin: the operator's command line over the encrypted conversation store."""
