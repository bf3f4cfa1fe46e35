"""The PostgreSQL store's parts: schema migrations, sealing, conversation ownership."""
