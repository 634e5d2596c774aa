"""MySQL/MariaDB: the source (:mod:`services.mysql.source`), the sink (:mod:`services.mysql.sink`) and what they share.

Shared: SQL identifier rules and the live table schema (:mod:`.sql`), the client and its error
seam (:mod:`.client`), and the change envelope the source publishes and the sink's cdc mode
applies (:mod:`.envelope`).
"""
