-- Staged rollouts of a signed release to a set of devices (issue 4).
-- (PostgreSQL twin of migrations/sqlite/0005_rollouts.sql.)
-- `plan` is the rollout's JSON plan (waves, thresholds, approval), validated by
-- rampart-update::rollout before it is stored; `state` and `wave` are where the rollout is;
-- `accepted_failures` are failures in the current wave an operator accepted by resuming.
CREATE TABLE rollouts (
    id          TEXT COLLATE "C" PRIMARY KEY,
    target      TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    plan        TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    wave        BIGINT  NOT NULL,
    accepted_failures BIGINT  NOT NULL DEFAULT 0,
    reason      TEXT,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);

-- One row per device of a rollout. `wave` is fixed when the rollout is created; `state` is
-- the hub's view (pending, queued, then what the device reports); `command` is the last
-- instruction sent (install, rollback), so a restarted hub never sends one twice;
-- `last_seq` is the device's event number of the last report applied, so a re-sent older
-- report never moves a device backwards.
CREATE TABLE rollout_devices (
    rollout_id  TEXT COLLATE "C" NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    device_id   TEXT COLLATE "C" NOT NULL,
    wave        BIGINT  NOT NULL,
    state       TEXT    NOT NULL,
    command     TEXT,
    detail      TEXT,
    last_seq    BIGINT  NOT NULL DEFAULT -1,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_wave ON rollout_devices (rollout_id, wave);
