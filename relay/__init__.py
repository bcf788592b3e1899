"""The chat relay: a Starlette WebSocket app on uvicorn."""
