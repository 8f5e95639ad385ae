"""autoloopd's test suite; a package so that `tests.helpers` serves the tests and bench/ alike."""
