"""The responder: turns `chat-message` jobs into streamed, stored assistant replies."""
