"""What a caller can ask of the service, without HTTP: submit, follow, list, erase, account.

Use cases raise the domain errors of ``service.usecases.errors``; ``service.http`` translates them
into problem details. Nothing here imports FastAPI (a test checks it).
"""
