-- Webhook events waiting for (or done with) delivery: one row per event and endpoint, written
-- in the same transaction as the change it reports where there is one.
CREATE TABLE webhook_outbox (
    id              TEXT NOT NULL,
    endpoint        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    delivered_at    BIGINT,
    given_up_at     BIGINT,
    last_error      TEXT,
    PRIMARY KEY (id, endpoint)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox(next_attempt_at) WHERE delivered_at IS NULL AND given_up_at IS NULL;
