-- Archive of cold days (issue 12; docs/DECISIONS.md "Archive of cold days").
--
-- `cellctl archive --before DATE` exports the rows of settled envelopes minted
-- before DATE (envelopes, claims, transfers, send_requests) to files and
-- deletes them, row by row: a day partition holds every month's day D, so it
-- is never dropped whole. What the cell must still know of an archived
-- envelope stays here, small and unpartitioned:
--
-- archives: one row per archive run of this cell, naming its files, so that
-- Get of an archived ID can say where it went.
CREATE TABLE archives (
    id               bigserial   PRIMARY KEY,
    -- Envelopes whose ID's mint date (YYMMDD) is before this day.
    before_date      date        NOT NULL,
    -- The directory the files were written to and the manifest's file name
    -- in it (the manifest lists every data file with its rows and SHA-256).
    directory        text        NOT NULL,
    manifest         text        NOT NULL,
    manifest_sha256  text        NOT NULL CHECK (manifest_sha256 ~ '^[0-9a-f]{64}$'),
    envelopes        bigint      NOT NULL CHECK (envelopes > 0),
    claims           bigint      NOT NULL CHECK (claims >= 0),
    transfers        bigint      NOT NULL CHECK (transfers >= 0),
    send_requests    bigint      NOT NULL CHECK (send_requests >= 0),
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- archived_envelopes: the carried totals of each archived envelope, what
-- reconciliation matches the ledger's entries under its keys against
-- (`send:<id>` a debit of sender/total paying order send_key; the
-- `claim:<id>:<seq>` credits claim_count of them summing claimed_cents; the
-- `refund:<id>` credit refunded_cents to the sender) instead of reporting
-- them as orphans. Written in the archive's transaction, never updated.
-- Status codes as in envelopes: 3 EXHAUSTED  4 EXPIRED  5 CANCELLED (final
-- states only: nothing unsettled is archived).
CREATE TABLE archived_envelopes (
    envelope_id     text        PRIMARY KEY CHECK (envelope_id ~ '^[0-9]{22}$'),
    archive_id      bigint      NOT NULL REFERENCES archives (id),
    sender          text        NOT NULL,
    status          smallint    NOT NULL CHECK (status IN (3, 4, 5)),
    total_cents     bigint      NOT NULL CHECK (total_cents > 0),
    claim_count     integer     NOT NULL CHECK (claim_count >= 0),
    claimed_cents   bigint      NOT NULL CHECK (claimed_cents >= 0),
    refunded_cents  bigint      NOT NULL CHECK (refunded_cents >= 0),
    -- The Send's idempotency key: the merchant order its debit paid.
    send_key        text,
    -- A cancelled envelope moved no money; any other paid out its whole total.
    CHECK (CASE WHEN status = 5
                THEN claim_count = 0 AND claimed_cents = 0 AND refunded_cents = 0
                ELSE claimed_cents + refunded_cents = total_cents END),
    CHECK (status <> 3 OR refunded_cents = 0)
);
CREATE INDEX archived_envelopes_archive ON archived_envelopes (archive_id);
