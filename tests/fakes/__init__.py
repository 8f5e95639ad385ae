"""Fake orchestrators and scorers (see README.md); their argv helpers are in
tests/helpers/fakes.py."""
