-- One Open per commit on one envelope: the hot row's update and the claim.
\set user random(1, 1000000000)
BEGIN;
UPDATE hot SET remaining = remaining - 1 WHERE id = 1;
INSERT INTO claims (envelope, user_id, amount) VALUES (1, :user, 1);
COMMIT;
