"""A registry as a client sees it: the transport (TLS, auth, the one retry policy), credentials,
the read side (client) and the write side (upload)."""
