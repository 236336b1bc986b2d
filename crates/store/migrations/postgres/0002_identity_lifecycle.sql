-- Identity lifecycle: identity kinds, groups and attributes, quarantine and approval,
-- policies, trusted CAs for just-in-time registration, claims, revocation and rotation.
-- (PostgreSQL twin of migrations/sqlite/0002_identity_lifecycle.sql; flags are 0/1 BIGINTs
-- as in SQLite so both backends read them the same way.)

ALTER TABLE devices ADD COLUMN kind TEXT NOT NULL DEFAULT 'device'
    CHECK (kind IN ('device', 'service', 'claim'));
ALTER TABLE devices ADD COLUMN group_name TEXT COLLATE "C";
ALTER TABLE devices ADD COLUMN attributes TEXT NOT NULL DEFAULT '{}';
ALTER TABLE devices ADD COLUMN quarantined BIGINT NOT NULL DEFAULT 0 CHECK (quarantined IN (0, 1));
-- 1 while a just-in-time registered device waits for `rampart device approve`.
ALTER TABLE devices ADD COLUMN pending BIGINT NOT NULL DEFAULT 0 CHECK (pending IN (0, 1));
-- How the identity came to be: cli, csr, jit:<CA fingerprint>, claim:<claim name>.
ALTER TABLE devices ADD COLUMN registered_via TEXT NOT NULL DEFAULT 'cli';

-- Fingerprint of the issuing CA certificate.
ALTER TABLE certificates ADD COLUMN issuer TEXT COLLATE "C" NOT NULL DEFAULT '';
ALTER TABLE certificates ADD COLUMN revoked_at BIGINT;
ALTER TABLE certificates ADD COLUMN revocation_reason TEXT;
-- End of the overlap window after a renewal; the certificate is retired then.
ALTER TABLE certificates ADD COLUMN retire_at BIGINT;
CREATE INDEX certificates_retire ON certificates (retire_at) WHERE retire_at IS NOT NULL;

CREATE TABLE policies (
    name        TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    version     BIGINT  NOT NULL,
    document    TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL
);

-- Every version ever stored, for review and rollback.
CREATE TABLE policy_versions (
    name        TEXT COLLATE "C" NOT NULL,
    version     BIGINT  NOT NULL,
    document    TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (name, version)
);

-- target: fleet, claims, device:ID, group:NAME, service:NAME, claim:NAME
CREATE TABLE policy_attachments (
    policy  TEXT COLLATE "C" NOT NULL REFERENCES policies (name) ON DELETE CASCADE,
    target  TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (policy, target)
);

-- Additional CAs whose device certificates are registered on first connect.
CREATE TABLE trusted_cas (
    fingerprint    TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    subject        TEXT    NOT NULL,
    certificate    TEXT    NOT NULL,
    auto_activate  BIGINT  NOT NULL CHECK (auto_activate IN (0, 1)),
    template       TEXT    NOT NULL,
    added_at       BIGINT  NOT NULL
);

-- Usage limits of claim identities (the identity itself is a devices row, kind = 'claim').
CREATE TABLE claims (
    name       TEXT COLLATE "C" PRIMARY KEY NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    max_uses   BIGINT,
    uses       BIGINT  NOT NULL DEFAULT 0,
    not_after  BIGINT
);

-- Serial numbers allowed to provision, with what they become.
CREATE TABLE provisioning_allowlist (
    serial_number  TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    device_id      TEXT COLLATE "C",
    group_name     TEXT COLLATE "C",
    attributes     TEXT    NOT NULL DEFAULT '{}',
    added_at       BIGINT  NOT NULL,
    used_at        BIGINT,
    used_by        TEXT
);

CREATE TABLE crl_numbers (
    ca_fingerprint  TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    number          BIGINT  NOT NULL
);

-- Which client ids each certificate was used with (audit: shared certificates).
CREATE TABLE certificate_usage (
    fingerprint  TEXT COLLATE "C" NOT NULL,
    client_id    TEXT COLLATE "C" NOT NULL,
    first_seen   BIGINT  NOT NULL,
    last_seen    BIGINT  NOT NULL,
    PRIMARY KEY (fingerprint, client_id)
);
