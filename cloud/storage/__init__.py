"""The cloud's storage: SQLite (the default) or PostgreSQL behind one interface (engine.py)."""
