"""Configuration from environment variables (and `.env`), defined once for both services."""

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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
    relay_deaf_seconds: float = Field(10.0, gt=0)
    ws_ping_seconds: float = Field(20.0, gt=0)
    startup_timeout_seconds: float = Field(10.0, gt=0)

    metrics_port: int = Field(9464, ge=0, le=65535)
    log_format: Literal["json", "text"] | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    auth_jwt_secret: SecretStr | None = None
    auth_jwks_url: str | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_leeway_seconds: float = Field(30.0, ge=0)
    auth_jwks_cache_seconds: float = Field(300.0, gt=0)

    rate_limit_per_minute: int = Field(30, ge=0, description="0: no limit")
    max_active_replies: int = Field(4, ge=0, description="0: no limit")
    max_websockets: int = Field(20, ge=0, description="0: no limit")
    max_body_bytes: int = Field(262144, ge=1024)
    cors_origins: Annotated[list[str], NoDecode] = []

    @field_validator(
        "auth_jwt_secret", "auth_jwks_url", "auth_issuer", "auth_audience", mode="before"
    )
    @classmethod
    def empty_is_unset(cls, value: object) -> object:
        """Compose passes `VAR=` for a variable left out of `.env`: that means unset."""
        return None if value == "" else value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
