"""Persistence: one repository per table over one SQLite database (aiosqlite).

SQL stays portable (TEXT/INTEGER/BIGINT, no SQLite-only syntax in table
definitions) so that a PostgreSQL backend can implement the same repositories.
"""
