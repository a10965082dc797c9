"""The HTTP API: routes per resource, request intake, schemas, problem details and use cases.

HTTP only: jobs run in service.jobs (embedded) or a Celery worker reached through service.queue;
nothing here imports ``worker`` or torch.
"""
