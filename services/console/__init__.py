"""The admin console: server-rendered pages over the other services' public APIs."""
