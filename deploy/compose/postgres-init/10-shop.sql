-- Run by the PostgreSQL image on first start, in the `shop` database: the table postgres-source's
-- sample captures (it creates its publication and replication slot itself).
CREATE TABLE public.orders (
  id BIGSERIAL PRIMARY KEY,
  customer_id BIGINT NOT NULL,
  total NUMERIC(12, 2) NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- deletes and updates carry the whole old row
ALTER TABLE public.orders REPLICA IDENTITY FULL;
INSERT INTO public.orders (customer_id, total) VALUES (1, 42.50), (2, 7.00);
