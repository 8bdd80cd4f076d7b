"""The API: REST for chat and history, and a WebSocket relay of live events."""
