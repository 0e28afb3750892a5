-- Tally's own output count beside the provider's, and what the collector learns from the pairs.
ALTER TABLE events ADD COLUMN measured_output_tokens INTEGER;

-- Per org and model: sums over events that carried both the provider's exact output count and
-- Tally's count of the same stream. exact_output / measured_output corrects later measured events.
CREATE TABLE calibration (
    org_id          INTEGER NOT NULL REFERENCES orgs(id),
    model           TEXT    NOT NULL,
    exact_output    INTEGER NOT NULL DEFAULT 0,
    measured_output INTEGER NOT NULL DEFAULT 0,
    samples         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, model)
) WITHOUT ROWID;
