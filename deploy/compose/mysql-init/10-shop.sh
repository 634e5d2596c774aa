# Sourced by the MySQL image's entrypoint on first start (not executable on purpose: sourcing gives
# it docker_process_sql). Creates what the sample configs expect: the `shop` database that
# mysql-source captures, as user `cdc`, and `shop_replica` that mysql-sink fills, as `replicator`.
docker_process_sql <<SQL
CREATE DATABASE IF NOT EXISTS shop;
CREATE DATABASE IF NOT EXISTS shop_replica;

CREATE USER IF NOT EXISTS 'cdc'@'%' IDENTIFIED BY '${MESHCONNECT_MYSQL_PASSWORD}';
GRANT SELECT, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'cdc'@'%';
CREATE USER IF NOT EXISTS 'replicator'@'%' IDENTIFIED BY '${MESHCONNECT_MYSQL_PASSWORD}';
GRANT ALL PRIVILEGES ON shop_replica.* TO 'replicator'@'%';
FLUSH PRIVILEGES;

CREATE TABLE shop.customers (
  id BIGINT PRIMARY KEY AUTO_INCREMENT,
  name VARCHAR(200) NOT NULL,
  email VARCHAR(200)
);
CREATE TABLE shop.orders (
  id BIGINT PRIMARY KEY AUTO_INCREMENT,
  customer_id BIGINT NOT NULL,
  total DECIMAL(12, 2) NOT NULL,
  updated_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3)
);
CREATE TABLE shop.items (
  id BIGINT PRIMARY KEY AUTO_INCREMENT,
  order_id BIGINT NOT NULL,
  sku VARCHAR(64) NOT NULL,
  quantity INT NOT NULL
);
INSERT INTO shop.customers (name, email) VALUES ('Ada', 'ada@example.com'), ('Linus', 'linus@example.com');
INSERT INTO shop.orders (customer_id, total) VALUES (1, 42.50), (2, 7.00);
INSERT INTO shop.items (order_id, sku, quantity) VALUES (1, 'book-1', 2), (2, 'pen-7', 1);
SQL
