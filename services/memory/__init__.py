"""Memory service: session history and per-user long-term memory on PostgreSQL + pgvector."""
