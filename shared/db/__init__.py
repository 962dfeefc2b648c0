"""PostgreSQL access: the schema and its idempotent migration. All timestamps are naive UTC."""

from shared.db.migrate import connect, create_pool, migrate

__all__ = ["connect", "create_pool", "migrate"]
