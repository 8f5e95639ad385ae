"""Both ends of the control channel: the API app and its server (daemon side), the socket
settings, the HTTP client and the quick socket reader (command side).

Rule: the API is a thin layer over the engine's commands and snapshot; the client side imports
only the standard library, so `status` and `ctl` start fast."""
