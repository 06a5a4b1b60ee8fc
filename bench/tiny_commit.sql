-- The smallest durable commit: run with one client, its rate is the WAL flush rate.
INSERT INTO ticks DEFAULT VALUES;
