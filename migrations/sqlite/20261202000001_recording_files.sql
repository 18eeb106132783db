-- Recordings that write files: options, why one failed, who started it; one row per file.
ALTER TABLE recordings ADD COLUMN audio_only BIGINT NOT NULL DEFAULT 0;
ALTER TABLE recordings ADD COLUMN reason TEXT;
ALTER TABLE recordings ADD COLUMN started_by TEXT;
-- At most one recording runs per meeting: a second start is a conflict.
CREATE UNIQUE INDEX recordings_one_running ON recordings(meeting_id) WHERE status = 'recording';
CREATE INDEX recordings_status ON recordings(status);

CREATE TABLE recording_files (
    id             TEXT PRIMARY KEY,
    recording_id   TEXT NOT NULL REFERENCES recordings(id) ON DELETE CASCADE,
    participant_id TEXT NOT NULL,
    identity       TEXT NOT NULL,
    display_name   TEXT NOT NULL,
    source         TEXT NOT NULL,
    content_type   TEXT NOT NULL,
    path           TEXT NOT NULL,
    kinds          TEXT,
    codecs         TEXT,
    size_bytes     BIGINT,
    duration_ms    BIGINT,
    status         TEXT NOT NULL,
    error          TEXT,
    started_at     BIGINT NOT NULL,
    ended_at       BIGINT
);
CREATE INDEX recording_files_recording ON recording_files(recording_id);
