-- A batch of 32 Opens per commit on one envelope: one hot-row update, 32 claims.
\set user random(1, 1000000000)
BEGIN;
UPDATE hot SET remaining = remaining - 32 WHERE id = 1;
INSERT INTO claims (envelope, user_id, amount)
    SELECT 1, :user + g, 1 FROM generate_series(1, 32) g;
COMMIT;
