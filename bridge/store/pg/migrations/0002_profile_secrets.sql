-- whatsapp-bridge schema 2: the profile's hashing secrets, kept in the database.
--
-- Seen ids' keyed hashes and the conversation locks' ids must be the same on every replica
-- at every moment, also while the profile key changes (replicas then hold the keys in
-- different orders: "OLD,NEW" on one, "NEW,OLD" on another). Deriving them from a key in
-- the configured list cannot promise that; a secret stored here, sealed with the profile
-- key (re-sealed by `rotate-key`), can. NULL until the first replica of this version opens
-- the profile and stores the values the earlier versions derived (bridge/store/pg/secrets.py),
-- so the hashes already in bridge_seen stay valid.
ALTER TABLE bridge_profiles ADD COLUMN secrets bytea;
