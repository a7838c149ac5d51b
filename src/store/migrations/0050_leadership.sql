-- Failover (issue 10): one row per leadership group. The leader renews lease_until;
-- a standby takes over once it has passed (database clock) by bumping epoch, and every
-- write transaction of a leader checks the epoch (FOR SHARE) before it commits.
CREATE TABLE IF NOT EXISTS leadership (
    name        text PRIMARY KEY,
    epoch       bigint NOT NULL,
    holder      text NOT NULL,
    lease_until timestamptz NOT NULL,
    since       timestamptz NOT NULL DEFAULT now()
);
