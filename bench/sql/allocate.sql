-- The allocation transaction of POST /allocate, as the service sends it on PostgreSQL
-- (allocation/repository.py, allocation/commit_sql.py), for pgbench: the calibration of a
-- benchmark run. It locks and reads the product, then writes the version, the batch, the
-- line, the Allocated event and its three deliveries (done at once: no worker takes them).
\set n random(0, 49)
BEGIN;
SELECT p.version_number,
       (SELECT version_number FROM allocation_product WHERE sku = 'SPREAD-' || :n),
       (SELECT json_agg(json_build_array(b.id, b.reference, b.purchased_quantity,
               b.allocated_quantity, b.eta) ORDER BY b.id)
          FROM allocation_batch b WHERE b.sku = p.sku),
       (SELECT json_build_array(a.qty, a.batch_id, a.version) FROM allocation_allocation a
          WHERE a.sku = p.sku AND a.orderid = 'calibration-' || :client_id)
  FROM allocation_product p WHERE p.sku = 'SPREAD-' || :n FOR UPDATE OF p;
WITH product AS (
       UPDATE allocation_product SET version_number = version_number + 1
        WHERE sku = 'SPREAD-' || :n RETURNING sku, version_number),
     batch AS (
       UPDATE allocation_batch SET allocated_quantity = allocated_quantity + 1
        WHERE reference = 'SPREAD-' || :n || '-b' RETURNING id),
     line AS (
       INSERT INTO allocation_allocation (orderid, sku, qty, batch_id, version)
       SELECT 'calibration-' || gen_random_uuid(), product.sku, 1, batch.id,
              product.version_number FROM product, batch RETURNING orderid, sku, version),
     logged AS (
       INSERT INTO allocation_storedevent (id, type, sku, version, payload, occurred_at,
              position, correlation_id, causation_id)
       SELECT gen_random_uuid(), 'Allocated', line.sku, line.version,
              jsonb_build_object('orderid', line.orderid, 'sku', line.sku, 'qty', 1),
              now(), 0, 'calibration', 'calibration' FROM line RETURNING id)
INSERT INTO allocation_delivery (event_id, handler, status, attempts, last_error,
       next_attempt_at, done_at)
SELECT logged.id, h, 'done', 1, '', now(), now() FROM logged,
       unnest(ARRAY['read_model.add_allocation', 'redis.publish_line_allocated',
                    'redis.append_to_event_stream']) h;
COMMIT;
