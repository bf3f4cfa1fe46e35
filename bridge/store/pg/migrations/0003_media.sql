-- whatsapp-bridge schema 3: inbound media files, shared by the replicas.
--
-- A media file (bridge/media/store.py) is kept here as its frames, byte for byte as they
-- are on a replica's disk: each already sealed with the profile's key (AES-256-GCM,
-- associated data binding profile, file name and frame index), so nothing readable is
-- stored. The name is 32 random hex digits, never the wamid. A replica's `media/` directory
-- is a cache of this table: a replica that lacks a file fetches it from here first.
--
-- The uploading replica writes a file (row and frames, one transaction) before it commits
-- the record naming it, so a record never names a file the database lacks. Rows of files
-- no message names any longer are deleted under the profile's head lock (the state then
-- holds every committed record): at once once a committed record named them (`recorded`),
-- after a grace for an upload whose record may still be on its way.

CREATE TABLE bridge_media (
    profile     text        NOT NULL REFERENCES bridge_profiles (slug) ON DELETE CASCADE,
    name        text        NOT NULL,
    frames      int         NOT NULL,
    bytes       bigint      NOT NULL,
    recorded    boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (profile, name)
);

CREATE TABLE bridge_media_frames (
    profile  text  NOT NULL,
    name     text  NOT NULL,
    idx      int   NOT NULL,
    frame    bytea NOT NULL,
    PRIMARY KEY (profile, name, idx),
    FOREIGN KEY (profile, name) REFERENCES bridge_media (profile, name) ON DELETE CASCADE
);
-- Sealed frames do not compress: store them out of line without trying.
ALTER TABLE bridge_media_frames ALTER COLUMN frame SET STORAGE EXTERNAL;
