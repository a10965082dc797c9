"""``uvicorn service.app:app`` (the deployed entry point): the app of service.http.app."""

from service.http.app import app, create_app

__all__ = ["app", "create_app"]
