"""mysql-sink: writes CloudEvents into MySQL/MariaDB (events table, mapped columns, or CDC apply)."""
