"""The HTTP edge: the app, routes per resource, request intake, schemas, problem details, links,
metrics and the page. Routes parse, call one use case (``service.usecases``) and shape the answer.

Jobs run in ``service.jobs`` (embedded) or a Celery worker reached through
``service.backends.celery_queue``; nothing here imports ``worker`` or torch.
"""
