-- The replicas whose lock session is open, by the owner name they lease
-- under (the session's application_name is `tidings replica <owner>`).
-- A claim whose owner is not listed was held by a replica that is gone
-- (killed, or cut off from the database): it is taken over at once.
CREATE VIEW live_replicas AS
    SELECT substr(application_name, 17) AS owner
      FROM pg_stat_activity
     WHERE application_name LIKE 'tidings replica %';
