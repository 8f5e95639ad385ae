"""The PostgreSQL backend (cluster mode): several hosts, one database, one budget."""
