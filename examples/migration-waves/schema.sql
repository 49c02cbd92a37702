CREATE TABLE services (
  name     text PRIMARY KEY,
  image    text NOT NULL,
  version  text NOT NULL,
  replicas int NOT NULL DEFAULT 1,
  ready    boolean
);
INSERT INTO services (name, image, version, replicas) VALUES
  ('orders', 'registry.example.com/orders:2.4.0', '2.4.0', 2);
