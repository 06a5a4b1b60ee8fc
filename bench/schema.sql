-- Tables of the pgbench baselines (bench/README.md): shaped like the cells'
-- envelope row and claims, without the columns the limits do not depend on.
DROP TABLE IF EXISTS hot, claims, accounts, ticks;
CREATE TABLE hot (id int PRIMARY KEY, remaining bigint NOT NULL);
INSERT INTO hot VALUES (1, 0);
CREATE TABLE claims (
    id bigserial PRIMARY KEY,
    envelope int NOT NULL,
    user_id bigint NOT NULL,
    amount bigint NOT NULL,
    opened_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 100000) g;
CREATE TABLE ticks (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
ANALYZE;
