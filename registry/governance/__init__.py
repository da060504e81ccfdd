"""Governance of the shared catalogue: aliases, approvals, policies, promotion, deprecation,
lineage and the audit query, with the database roles that enforce them on PostgreSQL."""
