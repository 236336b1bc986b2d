-- CRA compliance records (products, classifications, SBOMs, VEX statements, Article 14
-- reports, attachments): one JSON document per (kind, key), validated by rampart-compliance
-- before it is stored. (PostgreSQL twin of migrations/sqlite/0004_compliance.sql.)
CREATE TABLE compliance_records (
    kind       TEXT COLLATE "C" NOT NULL,
    key        TEXT COLLATE "C" NOT NULL,
    body       TEXT    NOT NULL,
    updated_at BIGINT  NOT NULL,
    PRIMARY KEY (kind, key)
);

-- Append-only history of every compliance record (who did what when): the audit trail of
-- reports, VEX decisions and classifications. Updates and deletes are refused.
CREATE TABLE compliance_history (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind   TEXT COLLATE "C" NOT NULL,
    key    TEXT COLLATE "C" NOT NULL,
    at     BIGINT  NOT NULL,
    action TEXT    NOT NULL,
    detail TEXT    NOT NULL
);
CREATE INDEX compliance_history_key ON compliance_history (kind, key, id);
CREATE FUNCTION compliance_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'compliance history is append-only';
END;
$$;
CREATE TRIGGER compliance_history_no_update BEFORE UPDATE ON compliance_history
    FOR EACH ROW EXECUTE FUNCTION compliance_history_append_only();
CREATE TRIGGER compliance_history_no_delete BEFORE DELETE ON compliance_history
    FOR EACH ROW EXECUTE FUNCTION compliance_history_append_only();
CREATE TRIGGER compliance_history_no_truncate BEFORE TRUNCATE ON compliance_history
    FOR EACH STATEMENT EXECUTE FUNCTION compliance_history_append_only();

-- Components of each release's SBOM, for fleet joins (which devices run which components).
CREATE TABLE sbom_components (
    product   TEXT COLLATE "C" NOT NULL,
    release   TEXT COLLATE "C" NOT NULL,
    bom_ref   TEXT COLLATE "C" NOT NULL,
    ecosystem TEXT COLLATE "C",
    package   TEXT COLLATE "C",
    version   TEXT NOT NULL,
    PRIMARY KEY (product, release, bom_ref)
);
CREATE INDEX sbom_components_package ON sbom_components (ecosystem, package);

-- OSV advisories imported offline, indexed by (ecosystem, package) so a scan reads only the
-- advisories of the packages it has.
CREATE TABLE osv_advisories (
    id       TEXT COLLATE "C" PRIMARY KEY,
    modified TEXT NOT NULL,
    body     TEXT NOT NULL
);
CREATE TABLE osv_packages (
    ecosystem TEXT COLLATE "C" NOT NULL,
    package   TEXT COLLATE "C" NOT NULL,
    advisory  TEXT COLLATE "C" NOT NULL REFERENCES osv_advisories (id) ON DELETE CASCADE,
    PRIMARY KEY (ecosystem, package, advisory)
);

-- The release each device reports it runs.
CREATE TABLE device_releases (
    device_id   TEXT COLLATE "C" PRIMARY KEY,
    product     TEXT    NOT NULL,
    release     TEXT    NOT NULL,
    reported_at BIGINT  NOT NULL
);
