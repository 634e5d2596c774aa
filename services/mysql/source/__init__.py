"""mysql-source: change data capture from the MySQL/MariaDB binlog (with snapshot), or polling."""
