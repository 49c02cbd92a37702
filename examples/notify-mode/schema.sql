CREATE TABLE flags (
  key     text PRIMARY KEY,
  enabled boolean NOT NULL DEFAULT true,
  payload jsonb NOT NULL DEFAULT '{}'
);
INSERT INTO flags VALUES
  ('new-checkout', true, '{"rollout": 25}'),
  ('dark-mode', false, '{}');
