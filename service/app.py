"""``uvicorn service.app:app`` (the deployed entry point): the app of service.api.app."""

from service.api.app import app, create_app

__all__ = ["app", "create_app"]
