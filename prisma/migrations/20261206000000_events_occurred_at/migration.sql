-- The events retention job (RELEVO_EVENTS_RETENTION) deletes rows by age.
CREATE INDEX "events_occurred_at_idx" ON "events"("occurred_at");
