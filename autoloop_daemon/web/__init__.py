"""The dashboard's static files (package data)."""
