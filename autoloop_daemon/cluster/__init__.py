"""Cluster mode above storage: this host's membership rounds, the cluster's budget, the hosting
that claims leases and runs targets under them, and opening the database.

Rule: speaks the project's nouns only; every SQL statement lives in `storage/postgres/`. The
engine never imports this package: it reaches cluster mode through the `Hosting` and `Budget`
protocols, chosen once in the composition root."""
