"""Assistant backends: something that turns a conversation's history into a reply."""
