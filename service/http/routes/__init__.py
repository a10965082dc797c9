"""Routes per resource: thin handlers that parse, call one use case and shape the answer."""

from fastapi import APIRouter

from service.http.routes import jobs, ops, transfer, web

router = APIRouter()
router.include_router(transfer.router)
router.include_router(jobs.router)
router.include_router(ops.router)
router.include_router(web.router)
