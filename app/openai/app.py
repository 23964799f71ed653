"""The /v1 sub-application, mounted on the main app: its own routes, docs (/v1/docs) and error shape."""

from __future__ import annotations

from fastapi import FastAPI

from app.openai import errors
from app.openai.routes import router

DESCRIPTION = """OpenAI-compatible routes: `OpenAI(base_url="http://HOST:PORT/v1", api_key=KEY)`.

Files are text corpora, fine-tuning jobs are training jobs, characters are tokens. Errors answer
`{"error": {"message", "type", "param", "code"}}`."""


def create_openai_app(parent: FastAPI) -> FastAPI:
    sub = FastAPI(title="charrnn: OpenAI-compatible API", version="0.1.0", description=DESCRIPTION)
    sub.state.http = lambda: parent.state.http  # the main app's httpx client, made in its lifespan
    errors.install(sub)
    sub.include_router(router)
    return sub
