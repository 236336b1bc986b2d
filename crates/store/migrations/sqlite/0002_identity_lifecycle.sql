-- Identity lifecycle: identity kinds, groups and attributes, quarantine and approval,
-- policies, trusted CAs for just-in-time registration, claims, revocation and rotation.

ALTER TABLE devices ADD COLUMN kind TEXT NOT NULL DEFAULT 'device'
    CHECK (kind IN ('device', 'service', 'claim'));
ALTER TABLE devices ADD COLUMN group_name TEXT;
ALTER TABLE devices ADD COLUMN attributes TEXT NOT NULL DEFAULT '{}';
ALTER TABLE devices ADD COLUMN quarantined INTEGER NOT NULL DEFAULT 0;
-- 1 while a just-in-time registered device waits for `rampart device approve`.
ALTER TABLE devices ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
-- How the identity came to be: cli, csr, jit:<CA fingerprint>, claim:<claim name>.
ALTER TABLE devices ADD COLUMN registered_via TEXT NOT NULL DEFAULT 'cli';

-- Fingerprint of the issuing CA certificate.
ALTER TABLE certificates ADD COLUMN issuer TEXT NOT NULL DEFAULT '';
ALTER TABLE certificates ADD COLUMN revoked_at INTEGER;
ALTER TABLE certificates ADD COLUMN revocation_reason TEXT;
-- End of the overlap window after a renewal; the certificate is retired then.
ALTER TABLE certificates ADD COLUMN retire_at INTEGER;
CREATE INDEX certificates_retire ON certificates (retire_at) WHERE retire_at IS NOT NULL;

CREATE TABLE policies (
    name        TEXT    PRIMARY KEY NOT NULL,
    version     INTEGER NOT NULL,
    document    TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL
);

-- Every version ever stored, for review and rollback.
CREATE TABLE policy_versions (
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    document    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);

-- target: fleet, claims, device:ID, group:NAME, service:NAME, claim:NAME
CREATE TABLE policy_attachments (
    policy  TEXT NOT NULL REFERENCES policies (name) ON DELETE CASCADE,
    target  TEXT NOT NULL,
    PRIMARY KEY (policy, target)
);

-- Additional CAs whose device certificates are registered on first connect.
CREATE TABLE trusted_cas (
    fingerprint    TEXT    PRIMARY KEY NOT NULL,
    subject        TEXT    NOT NULL,
    certificate    TEXT    NOT NULL,
    auto_activate  INTEGER NOT NULL,
    template       TEXT    NOT NULL,
    added_at       INTEGER NOT NULL
);

-- Usage limits of claim identities (the identity itself is a devices row, kind = 'claim').
CREATE TABLE claims (
    name       TEXT    PRIMARY KEY NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    max_uses   INTEGER,
    uses       INTEGER NOT NULL DEFAULT 0,
    not_after  INTEGER
);

-- Serial numbers allowed to provision, with what they become.
CREATE TABLE provisioning_allowlist (
    serial_number  TEXT    PRIMARY KEY NOT NULL,
    device_id      TEXT,
    group_name     TEXT,
    attributes     TEXT    NOT NULL DEFAULT '{}',
    added_at       INTEGER NOT NULL,
    used_at        INTEGER,
    used_by        TEXT
);

CREATE TABLE crl_numbers (
    ca_fingerprint  TEXT    PRIMARY KEY NOT NULL,
    number          INTEGER NOT NULL
);

-- Which client ids each certificate was used with (audit: shared certificates).
CREATE TABLE certificate_usage (
    fingerprint  TEXT    NOT NULL,
    client_id    TEXT    NOT NULL,
    first_seen   INTEGER NOT NULL,
    last_seen    INTEGER NOT NULL,
    PRIMARY KEY (fingerprint, client_id)
);
