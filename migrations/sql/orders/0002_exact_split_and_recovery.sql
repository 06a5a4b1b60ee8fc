-- Fair split, per-envelope payment recovery, and idempotency-row upkeep
-- (issue 8; docs/DECISIONS.md "Money paths").
--
-- split_rule: which allocation rule an envelope was sent under, so that its
-- stored seed replays the split it actually got (redcell_cell::allocation):
--   1 LEGACY  uniform in [1, min(2m/n, m-(n-1))]   (every envelope before this migration)
--   2 EXACT   uniform in [1, U], U the randomized rounding of (2m-n)/n (DESIGN §5)
-- Rows that exist now were split by rule 1; the default is dropped afterwards so
-- that every new row must name its rule.
ALTER TABLE envelopes ADD COLUMN split_rule smallint NOT NULL DEFAULT 1 CHECK (split_rule IN (1, 2));
ALTER TABLE envelopes ALTER COLUMN split_rule DROP DEFAULT;

-- Recovery of PENDING_PAYMENT envelopes handles each envelope on its own: one
-- whose payment shard is down backs off (like a transfer) instead of blocking
-- the others. NULL: check as soon as the grace period is over.
ALTER TABLE envelopes ADD COLUMN payment_checks integer NOT NULL DEFAULT 0 CHECK (payment_checks >= 0);
ALTER TABLE envelopes ADD COLUMN next_payment_check timestamptz;
ALTER TABLE envelopes ADD COLUMN last_payment_error text;

-- A Send's idempotency row is part of its envelope's record (reconcile checks
-- the debit's merchant order against it) and lives exactly as long as the
-- envelope's row: deleted with a refused Send's envelope, archived with the
-- envelope's day (`cellctl archive`). Both find it by envelope.
CREATE INDEX send_requests_envelope ON send_requests (envelope_id);
