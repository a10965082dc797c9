"""HTTP job API for Q-Align: FastAPI app, job store, result store and the embedded worker.

Nothing here is imported by qalign_core; the library stays free of web, queue and storage code.
"""
