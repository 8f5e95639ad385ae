"""Both ends of the control channel: the API app and its server (daemon side), the socket
settings, the HTTP client and the quick socket reader (command side).

Rule: the API is a thin layer over the engine's commands and snapshot; the client side imports
only the standard library, so `status` and `ctl` start fast. Importing the package defers the
HTTP/2 stack the server's hypercorn would load at once (lazy_http2.py)."""

from autoloop_daemon.control.lazy_http2 import defer_http2

defer_http2()
