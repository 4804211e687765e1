"""One thread for the database work of the async side: the routing snapshot, the API key table and the request log
writer. Each thread keeps its own database connection, and an SQLite connection holds its page cache and prepared
statements for good, so one thread keeps that to one connection instead of one per thread of the default pool."""

from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clood-db")


def in_db_thread(func):
    """`await in_db_thread(func)(*args)`: run a synchronous database function off the event loop, in that thread."""
    return sync_to_async(func, thread_sensitive=False, executor=_executor)
