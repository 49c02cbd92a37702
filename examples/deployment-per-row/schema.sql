CREATE TABLE apps (
  name                 text PRIMARY KEY,
  image                text NOT NULL,
  replicas             int NOT NULL DEFAULT 1,
  env                  jsonb NOT NULL DEFAULT '{}',
  ready_replicas       int,
  unavailable_replicas int
);
INSERT INTO apps (name, image, replicas, env) VALUES
  ('web', 'nginx:1.25', 2, '{"MODE": "production", "GREETING": "say \"hi\"\nthen: leave"}'),
  ('worker', 'busybox:1.36', 1, '{}');
