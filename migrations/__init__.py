"""Alembic migrations (``illustrations db upgrade``). Packaged so an installed image can migrate."""
