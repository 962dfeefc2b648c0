"""PostgreSQL access: connections, the schema and its idempotent migration. All timestamps are
naive UTC."""

from shared.db.connection import connect, create_pool, wait_for_database
from shared.db.migrate import migrate

__all__ = ["connect", "create_pool", "migrate", "wait_for_database"]
