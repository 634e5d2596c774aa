"""mode ``cdc``: applies mysql-source change envelopes (c/u/d/r with before/after images, DDL) in source order.

The mesh delivers at least once and not necessarily in source order (a
redelivered push, or changes of one row spread over several sink replicas), so the sink never
trusts arrival order: every change envelope carries its binlog position (``source.file``,
``source.pos``, ``source.row``) and is applied only when it is newer than the last change applied to
its row. The version of a change is ``<binlog file number>:<pos>:<phase>:<row>``, zero-padded so
that text order is source order; phase 0 is a snapshot's table DDL, 1 a snapshot row (both at the
snapshot's position), 2 a streamed change, so a streamed change at or after the snapshot position
always wins over the snapshot's copy of its row. Per target row the sink keeps the version of the
last change applied in ``meshconnect_row_versions`` (``tbl``, ``pk`` = the key as JSON, ``version``)
of the target database, in the transaction of the row change: the batch locks its keys' versions
(``SELECT ... FOR UPDATE``), keeps per key only the newest change that is newer than the stored
version, applies those and upserts their versions. A delete leaves its version behind (a
tombstone), so an older insert or update delivered late cannot bring the row back; a replay is a
no-op; an update that changes the primary key versions both keys (the old one as deleted).
Schema changes are ordered per table the same way (``pk`` ``ddl``): a DDL event not newer than the
table's last applied one is skipped; CREATE, DROP and TRUNCATE also set the table's floor (``pk``
``reset``): row changes from before it belong to an earlier incarnation of the table and are
skipped. The marks are set, with a ``pending`` one, before the statement runs, under a named lock per
table: a second replica with the same change skips it, and newer row changes wait until it ran.
Envelopes of mysql-source's polling mode have no binlog position and are applied as they
come. Versions compare positions of one source server: after a switch to another server (whose
binlog numbering differs) the replica is re-created, or the versions table emptied. Tombstones
older than ``tombstone_retention`` are purged in the background; the purge raises the table's floor
to the newest version it removed, so what a tombstone kept out, the floor still keeps out.

DDL text is never run as it came: :mod:`.ddl` parses it, checks it against an allow-list and
rebuilds it with every table in ``database`` (or refuses it as a DataError). The parts:
:mod:`.versions` (the versions table and the order of changes), :mod:`.marks` (schema changes in
order), :mod:`.purge` (tombstones), :mod:`.apply` (the mode itself).
"""

from services.mysql.sink.cdc.apply import CdcMode
from services.mysql.sink.cdc.versions import VERSIONS_TABLE, change_version

__all__ = ["VERSIONS_TABLE", "CdcMode", "change_version"]
