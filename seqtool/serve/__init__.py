"""`seqtool serve`: an HTTP translation server (FastAPI + uvicorn, the `serve` extra) with a web page.

It only calls the decoding library (`decode.load_translator`, `Translator.translate`): app.py (routes, validation,
errors as JSON), schemas.py (request/response bodies), batcher.py (one dynamic batching loop per model),
registry.py (the models a server holds), server.py (start-up and graceful shutdown), page.html (the web page).
"""
