"""The one Alembic environment of every service database (driven by libs.common.migrations).

The caller hands over a connection, the service's metadata and its name in
``config.attributes``; each service has its own version table ``alembic_version_<service>``.
"""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes["connection"]
service = config.attributes["service"]

context.configure(
    connection=connection,
    target_metadata=config.attributes["metadata"],
    version_table=f"alembic_version_{service}",
    render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE through a copy
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
