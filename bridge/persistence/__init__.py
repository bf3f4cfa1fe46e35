"""Durable, encrypted state on disk: keys, journal, snapshots, the profile lock."""
