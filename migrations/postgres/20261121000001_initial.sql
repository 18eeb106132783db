-- Convene schema v1 (PostgreSQL). Portable types, so the same queries run on SQLite and
-- PostgreSQL through sqlx's Any driver: ids are UUID text, times unix milliseconds (BIGINT),
-- flags BIGINT 0/1 (the Any driver cannot decode SQLite booleans).

CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE,
    username        TEXT NOT NULL UNIQUE,
    display_name    TEXT NOT NULL,
    password_hash   TEXT NOT NULL,
    avatar_url      TEXT,
    pref_mic_muted  BIGINT NOT NULL DEFAULT 0,
    pref_camera_off BIGINT NOT NULL DEFAULT 0,
    failed_logins   BIGINT NOT NULL DEFAULT 0,
    locked_until    BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE TABLE refresh_tokens (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    family_id   TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    revoked_at  BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens(user_id);

CREATE TABLE meetings (
    id               TEXT PRIMARY KEY,
    code             TEXT NOT NULL UNIQUE,
    host_id          TEXT NOT NULL REFERENCES users(id),
    title            TEXT NOT NULL,
    description      TEXT NOT NULL DEFAULT '',
    scheduled_at     BIGINT,
    duration_minutes BIGINT,
    access           TEXT NOT NULL,
    passcode         TEXT,
    allow_guests     BIGINT NOT NULL,
    waiting_room     BIGINT NOT NULL,
    mute_on_join     BIGINT NOT NULL,
    video_on_join    BIGINT NOT NULL,
    chat             BIGINT NOT NULL,
    screen_share     BIGINT NOT NULL,
    recording        BIGINT NOT NULL,
    max_participants BIGINT NOT NULL,
    status           TEXT NOT NULL,
    started_at       BIGINT,
    ended_at         BIGINT,
    -- Bumped by every join: the first write of a join transaction, so concurrent joins of one
    -- meeting serialize on it (row lock in PostgreSQL, the write lock in SQLite).
    seat_version     BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX meetings_host ON meetings(host_id);

CREATE TABLE meeting_invites (
    id          TEXT PRIMARY KEY,
    meeting_id  TEXT NOT NULL REFERENCES meetings(id) ON DELETE CASCADE,
    user_id     TEXT REFERENCES users(id) ON DELETE CASCADE,
    email       TEXT,
    created_at  BIGINT NOT NULL
);
CREATE UNIQUE INDEX meeting_invites_user ON meeting_invites(meeting_id, user_id);
CREATE UNIQUE INDEX meeting_invites_email ON meeting_invites(meeting_id, email);

CREATE TABLE join_links (
    id          TEXT PRIMARY KEY,
    meeting_id  TEXT NOT NULL REFERENCES meetings(id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL,
    uses_left   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL REFERENCES users(id),
    created_at  BIGINT NOT NULL
);

CREATE TABLE participants (
    id            TEXT PRIMARY KEY,
    meeting_id    TEXT NOT NULL REFERENCES meetings(id) ON DELETE CASCADE,
    user_id       TEXT REFERENCES users(id),
    identity      TEXT NOT NULL,
    display_name  TEXT NOT NULL,
    role          TEXT NOT NULL,
    status        TEXT NOT NULL,
    mic_muted     BIGINT NOT NULL DEFAULT 0,
    camera_off    BIGINT NOT NULL DEFAULT 0,
    joined_at     BIGINT,
    left_at       BIGINT,
    created_at    BIGINT NOT NULL
);
CREATE INDEX participants_meeting ON participants(meeting_id, status);

CREATE TABLE bans (
    meeting_id  TEXT NOT NULL REFERENCES meetings(id) ON DELETE CASCADE,
    identity    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (meeting_id, identity)
);

CREATE TABLE messages (
    id              TEXT PRIMARY KEY,
    meeting_id      TEXT NOT NULL REFERENCES meetings(id) ON DELETE CASCADE,
    participant_id  TEXT,
    user_id         TEXT,
    sender_name     TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX messages_meeting ON messages(meeting_id, id);

CREATE TABLE recordings (
    id           TEXT PRIMARY KEY,
    meeting_id   TEXT NOT NULL REFERENCES meetings(id) ON DELETE CASCADE,
    status       TEXT NOT NULL,
    path         TEXT,
    size_bytes   BIGINT,
    duration_ms  BIGINT,
    started_at   BIGINT,
    ended_at     BIGINT,
    created_at   BIGINT NOT NULL
);
CREATE INDEX recordings_meeting ON recordings(meeting_id);
