-- Partitions and leases (scale-out).
--
-- A projection (or a reaction's follower) is split into P partitions by a key of its
-- events; each partition has its own row in `tracking`. A partition is worked on by the
-- worker that holds its lease: a row here with an owner, a generation and an expiry that
-- the owner's heartbeat keeps pushing forward. Every batch transaction checks its lease
-- (owner and generation, FOR SHARE) before it commits, so a worker that lost its lease
-- (paused past the expiry, cut off from the database, or fenced by a rescale) commits
-- nothing more for that partition. Generations come from one sequence and never repeat.
CREATE SEQUENCE lease_generation;

CREATE TABLE leases (
    projection text NOT NULL,
    partition integer NOT NULL,
    owner text,
    generation bigint NOT NULL DEFAULT nextval('lease_generation'),
    acquired_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (projection, partition)
);

-- Worker processes that share out partitions: each refreshes its row every heartbeat.
-- A member whose row expired, or whose database session is gone (the process was killed),
-- is dead: the others share out its partitions.
CREATE TABLE worker_members (
    worker_id text PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    backend_pid integer NOT NULL,
    consumers text[] NOT NULL,
    connections integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz NOT NULL
);

-- The number of partitions of a projection or reaction, when an operator set one
-- (`eventkit partitions NAME --set P`); otherwise the consumer's class says (default 1).
CREATE TABLE partitioning (
    projection text PRIMARY KEY,
    partitions integer NOT NULL CHECK (partitions BETWEEN 1 AND 1024),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- A worker's state is per partition now.
ALTER TABLE projection_workers ADD COLUMN partition integer NOT NULL DEFAULT 0;
ALTER TABLE projection_workers DROP CONSTRAINT projection_workers_pkey;
ALTER TABLE projection_workers ADD PRIMARY KEY (projection, partition);
