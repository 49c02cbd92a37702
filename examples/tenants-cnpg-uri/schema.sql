CREATE TABLE tenants (
  slug        text PRIMARY KEY,
  owner_group text NOT NULL,
  tier        text,
  archived    boolean NOT NULL DEFAULT false
);
INSERT INTO tenants VALUES
  ('acme', 'acme-admins', 'gold', false),
  ('Globex Corp', 'globex-admins', NULL, false),
  ('initech', 'initech-admins', 'free', true);
