"""Pure-ASGI middleware, one class per module. Starlette's HTTP-middleware base class
runs the app in a separate task behind a memory stream, which breaks or slows streams."""
