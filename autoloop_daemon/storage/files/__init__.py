"""storage.files."""
