-- Pruning reads the inbox and the outbox by age (shared/platform/src/retention.rs):
-- BRIN indexes cost next to nothing on the hot insert paths.
CREATE INDEX inbox_by_received_at ON inbox USING brin (received_at);
CREATE INDEX outbox_by_created_at ON outbox USING brin (created_at);
CREATE INDEX dead_letters_by_replayed_at ON dead_letters (replayed_at) WHERE replayed_at IS NOT NULL;
