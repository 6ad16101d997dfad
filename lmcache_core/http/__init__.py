"""The HTTP admin frontend (FastAPI)."""
