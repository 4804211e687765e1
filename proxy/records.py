"""The request log writer: rows are collected in memory and written in batches by a background task."""

import asyncio
import logging

from django.conf import settings
from django.db import transaction

from clood_site.db import in_db_thread
from proxy.models import ApiKey, RequestLog

log = logging.getLogger(__name__)

_pending = []
_writer = None


def add(**fields):
    """Queue one RequestLog row (as plain fields: the model instance is made by the writer); never blocks."""
    _pending.append(fields)
    _start_writer()


async def flush():
    """Write everything queued so far (also called by tests and at shutdown)."""
    global _pending
    if not _pending:
        return 0
    rows, _pending = _pending, []
    try:
        await in_db_thread(_write)(rows)
    except Exception:
        log.exception("could not write %d request log rows", len(rows))
        return 0
    return len(rows)


def _write(rows):
    # SQLite keeps every distinct statement a connection has run, and an INSERT of n rows is a new statement for
    # each n: batches of 32, 16, 8, 4, 2 and 1 rows keep that to six statements (measured: ~2.5 MiB less per
    # connection than arbitrary sizes). One transaction for the whole flush.
    objs = [RequestLog(**fields) for fields in rows]
    with transaction.atomic():
        start = 0
        while start < len(objs):
            size = 1 << min(5, (len(objs) - start).bit_length() - 1)
            RequestLog.objects.bulk_create(objs[start : start + size])
            start += size
    last_used = {}
    for fields in rows:
        key_id = fields.get("api_key_id")
        if key_id is not None:
            last_used[key_id] = max(last_used.get(key_id, fields["finished_at"]), fields["finished_at"])
    for key_id, when in last_used.items():
        ApiKey.objects.filter(pk=key_id).update(last_used_at=when)


async def _write_forever():
    while True:
        await asyncio.sleep(settings.CLOOD_LOG_FLUSH_INTERVAL)
        await flush()


def _start_writer():
    global _writer
    if _writer is None or _writer.done():
        try:
            _writer = asyncio.get_running_loop().create_task(_write_forever(), name="clood-request-log")
        except RuntimeError:
            pass  # no loop (sync caller): rows are written by the next flush()
