"""Configuration from environment variables (and `.env`), defined once for both services."""

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    mongodb_url: str = "mongodb://localhost:27017"
    mongodb_db: str = "chat"
    rabbitmq_url: str = "amqp://guest:guest@localhost:5672/"

    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    openai_timeout_seconds: float = Field(60.0, gt=0)
    system_prompt: str = "You are a helpful assistant."
    context_messages: int = Field(50, ge=1)
    context_tokens: int = Field(8000, ge=1)

    api_host: str = "127.0.0.1"
    api_port: int = 8000

    responder_concurrency: int = Field(512, ge=1)
    reply_lease_seconds: float = Field(15.0, gt=0)
    reply_max_attempts: int = Field(3, ge=1)
    shutdown_grace_seconds: float = Field(20.0, ge=0)
    store_flush_seconds: float = Field(1.0, gt=0)
    subscriber_buffer: int = Field(4096, ge=16)
    ws_ping_seconds: float = Field(20.0, gt=0)
    startup_timeout_seconds: float = Field(10.0, gt=0)


@lru_cache
def get_settings() -> Settings:
    return Settings()
