-- whatsapp-bridge schema 1: a per-profile replicated log of encrypted change records.
--
-- Every mutation of a profile's state is a record (bridge/records.py); the database keeps
-- them in commit order, sealed with the profile's key (AES-256-GCM, associated data binding
-- profile, table and seq). Each replica replays the log into memory and follows its tail.
-- Nothing readable is stored: no message text, no names, no phone numbers, no wamids (Meta's
-- wamids embed the sender's phone): seen ids are keyed hashes (HMAC).

CREATE TABLE bridge_profiles (
    slug        text PRIMARY KEY,
    -- The last seq handed out; the UPDATE that advances it also serialises the profile's
    -- commits, so seq order is commit order and a replica following the tail misses nothing.
    head        bigint NOT NULL DEFAULT 0,
    -- Records at or below this seq were deleted, being in the snapshot: a replica that has
    -- not applied them yet must load the snapshot again.
    pruned      bigint NOT NULL DEFAULT 0,
    -- A known value sealed with the profile's key: a replica with another key stops at start.
    key_check   bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE bridge_records (
    profile  text   NOT NULL REFERENCES bridge_profiles (slug) ON DELETE CASCADE,
    seq      bigint NOT NULL,
    sealed   bytea  NOT NULL,
    PRIMARY KEY (profile, seq)
);

-- Inbound message ids already recorded, as keyed hashes. The primary key is what makes a
-- message recorded once across replicas: INSERT ... ON CONFLICT DO NOTHING RETURNING, in the
-- same transaction as the message's record. Kept longer than Meta's 7-day retry window.
CREATE TABLE bridge_seen (
    profile      text   NOT NULL REFERENCES bridge_profiles (slug) ON DELETE CASCADE,
    id_hash      bytea  NOT NULL,
    received_ms  bigint NOT NULL,
    PRIMARY KEY (profile, id_hash)
);
CREATE INDEX bridge_seen_received ON bridge_seen (profile, received_ms);

-- A compacted state (the file store's snapshot format, sealed) covering records <= upto:
-- records at or below it can be deleted, so erased conversations leave the database.
CREATE TABLE bridge_snapshots (
    profile  text   PRIMARY KEY REFERENCES bridge_profiles (slug) ON DELETE CASCADE,
    upto     bigint NOT NULL,
    sealed   bytea  NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
