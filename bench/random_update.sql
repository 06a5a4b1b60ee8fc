-- One update of a random row among 100k per commit: no hot row.
\set id random(1, 100000)
UPDATE accounts SET balance = balance + 1 WHERE id = :id;
