"""HTTP routers. Nothing below this package imports it."""
