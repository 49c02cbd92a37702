CREATE TABLE users (
  id         serial PRIMARY KEY,
  username   text NOT NULL UNIQUE,
  email      text,
  active     boolean NOT NULL DEFAULT true,
  created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO users (username, email, active, created_at) VALUES
  ('alice', 'alice@example.com', true, '2024-01-15 09:00:00+00'),
  ('Bob_Smith', NULL, true, '2024-02-01 12:30:00+00'),
  ('carol', 'carol@example.com', false, '2024-03-10 08:00:00+00');
