-- CRA compliance records (products, classifications, SBOMs, VEX statements, Article 14
-- reports, attachments): one JSON document per (kind, key), validated by rampart-compliance
-- before it is stored.
CREATE TABLE compliance_records (
    kind       TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, key)
);

-- Append-only history of every compliance record (who did what when): the audit trail of
-- reports, VEX decisions and classifications. Updates and deletes are refused.
CREATE TABLE compliance_history (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind   TEXT    NOT NULL,
    key    TEXT    NOT NULL,
    at     INTEGER NOT NULL,
    action TEXT    NOT NULL,
    detail TEXT    NOT NULL
);
CREATE INDEX compliance_history_key ON compliance_history (kind, key, id);
CREATE TRIGGER compliance_history_no_update BEFORE UPDATE ON compliance_history
BEGIN SELECT RAISE(ABORT, 'compliance history is append-only'); END;
CREATE TRIGGER compliance_history_no_delete BEFORE DELETE ON compliance_history
BEGIN SELECT RAISE(ABORT, 'compliance history is append-only'); END;

-- Components of each release's SBOM, for fleet joins (which devices run which components).
CREATE TABLE sbom_components (
    product   TEXT NOT NULL,
    release   TEXT NOT NULL,
    bom_ref   TEXT NOT NULL,
    ecosystem TEXT,
    package   TEXT,
    version   TEXT NOT NULL,
    PRIMARY KEY (product, release, bom_ref)
);
CREATE INDEX sbom_components_package ON sbom_components (ecosystem, package);

-- OSV advisories imported offline, indexed by (ecosystem, package) so a scan reads only the
-- advisories of the packages it has.
CREATE TABLE osv_advisories (
    id       TEXT PRIMARY KEY,
    modified TEXT NOT NULL,
    body     TEXT NOT NULL
);
CREATE TABLE osv_packages (
    ecosystem TEXT NOT NULL,
    package   TEXT NOT NULL,
    advisory  TEXT NOT NULL REFERENCES osv_advisories (id) ON DELETE CASCADE,
    PRIMARY KEY (ecosystem, package, advisory)
);

-- The release each device reports it runs.
CREATE TABLE device_releases (
    device_id   TEXT    PRIMARY KEY,
    product     TEXT    NOT NULL,
    release     TEXT    NOT NULL,
    reported_at INTEGER NOT NULL
);
