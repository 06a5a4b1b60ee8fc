-- A cell's order database (DESIGN.md §5).
--
-- envelopes and claims are LIST-partitioned by the envelope ID's day of month
-- (DD, 1-31): the partition key is derived from the ID, so a lookup by ID prunes
-- to one partition, hot data stays small, and a cold day is archived and
-- truncated as a whole (`cellctl archive`). Money is bigint cents.

-- Status codes mirror redcell.v1.EnvelopeStatus.
--   1 PENDING_PAYMENT  2 ACTIVE  3 EXHAUSTED  4 EXPIRED  5 CANCELLED
-- Kind codes mirror redcell.v1.EnvelopeKind: 1 LUCKY  2 EQUAL  3 EXCLUSIVE

CREATE TABLE envelopes (
    day              smallint    NOT NULL CHECK (day BETWEEN 1 AND 31),
    id               text        NOT NULL CHECK (id ~ '^[0-9]{22}$'),
    sender           text        NOT NULL,
    kind             smallint    NOT NULL CHECK (kind BETWEEN 1 AND 3),
    status           smallint    NOT NULL CHECK (status BETWEEN 1 AND 5),
    total_cents      bigint      NOT NULL CHECK (total_cents > 0),
    count            integer     NOT NULL CHECK (count > 0),
    remaining_cents  bigint      NOT NULL CHECK (remaining_cents >= 0 AND remaining_cents <= total_cents),
    remaining_count  integer     NOT NULL CHECK (remaining_count >= 0 AND remaining_count <= count),
    greeting         text        NOT NULL,
    recipients       text[]      NOT NULL,
    -- CSPRNG seed of the split: an audit replays every share from it.
    seed             bytea       NOT NULL CHECK (length(seed) = 32),
    -- Bumped by every write: the optimistic check that rejects a stale writer.
    version          bigint      NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (day, id),
    -- Shares left iff cents left: both reach zero together.
    CHECK ((remaining_count = 0) = (remaining_cents = 0)),
    CHECK (remaining_cents >= remaining_count)
) PARTITION BY LIST (day);

CREATE TABLE claims (
    day            smallint    NOT NULL,
    envelope_id    text        NOT NULL,
    user_id        text        NOT NULL,
    -- 1-based position of the share in the split.
    seq            integer     NOT NULL CHECK (seq > 0),
    amount_cents   bigint      NOT NULL CHECK (amount_cents > 0),
    opened_at      timestamptz NOT NULL DEFAULT now(),
    -- The last line against a double open.
    PRIMARY KEY (day, envelope_id, user_id),
    UNIQUE (day, envelope_id, seq)
) PARTITION BY LIST (day);

DO $$
BEGIN
    FOR d IN 1..31 LOOP
        EXECUTE format('CREATE TABLE envelopes_%s PARTITION OF envelopes FOR VALUES IN (%s)', lpad(d::text, 2, '0'), d);
        EXECUTE format('CREATE TABLE claims_%s PARTITION OF claims FOR VALUES IN (%s)', lpad(d::text, 2, '0'), d);
    END LOOP;
END $$;

-- Workers scan for these; partial indexes keep the scans proportional to the work.
CREATE INDEX envelopes_active_expiry ON envelopes (expires_at) WHERE status = 2;
CREATE INDEX envelopes_pending_payment ON envelopes (created_at) WHERE status = 1;
CREATE INDEX envelopes_sender_created ON envelopes (sender, created_at DESC, id DESC);
CREATE INDEX claims_user_opened ON claims (user_id, opened_at DESC, envelope_id DESC);

-- Send idempotency: (sender, key) -> envelope. Not partitioned, so the key is
-- unique across days.
CREATE TABLE send_requests (
    sender           text        NOT NULL,
    idempotency_key  text        NOT NULL,
    envelope_id      text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sender, idempotency_key)
);

-- Block allocation of the 10-digit ID sequence, unique within (cell, date).
CREATE TABLE id_blocks (
    mint_date  integer PRIMARY KEY CHECK (mint_date BETWEEN 20000101 AND 20991231),  -- YYYYMMDD
    next_seq   bigint NOT NULL CHECK (next_seq >= 0 AND next_seq <= 10000000000)
);

-- The settlement outbox: every claim and every refund has exactly one row,
-- written in the same transaction as the claim or the expiry. `key` is the
-- idempotency key of the ledger credit.
--   kind: 1 CLAIM (credit the receiver)  2 REFUND (credit the sender)
--   status: 1 PENDING  2 DONE
CREATE TABLE transfers (
    id               bigserial   PRIMARY KEY,
    key              text        NOT NULL UNIQUE,
    kind             smallint    NOT NULL CHECK (kind IN (1, 2)),
    envelope_id      text        NOT NULL,
    user_id          text        NOT NULL,
    amount_cents     bigint      NOT NULL CHECK (amount_cents > 0),
    status           smallint    NOT NULL DEFAULT 1 CHECK (status IN (1, 2)),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    done_at          timestamptz
);
CREATE INDEX transfers_pending ON transfers (next_attempt_at) WHERE status = 1;
CREATE INDEX transfers_envelope ON transfers (envelope_id);
