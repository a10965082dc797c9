"""OpenAPI response declarations shared by the routes."""

from service.api.schemas import Problem

PROBLEM = {"model": Problem, "content": {"application/problem+json": {}}}
AUTH = {401: PROBLEM, 403: PROBLEM}
