"""An OpenAI-compatible streaming server with scripted, reproducible replies.

It stands in for the real chat-completions API in integration tests, the benchmark and the
offline demo, so callers can predict every token (`reply_tokens`) and inspect what was asked
and when each token left (`/_mock/requests`, `/_mock/emissions`).
"""

from mock_openai.app import create_app
from mock_openai.script import reasoning_tokens, reply_tokens

__all__ = ["create_app", "reasoning_tokens", "reply_tokens"]
