"""The configuration server: registration, heartbeats, health, RPO, recovery points, events, alerts
and jobs of one estate, with a REST API and a dashboard.

    store.py    one storage layer over SQLite (default) or PostgreSQL
    service.py  vault passphrase, tokens, registration, heartbeats, catalog, events, health overview
    health.py   Healthy / Warning / Critical as ASR, from observed facts
    alerts.py   conditions raised once and cleared once; email (SMTP) and webhook
    jobs.py     failover jobs as durable steps with a log (resumable)
    certs.py    the vault CA and the certificates issued at registration
    app.py      FastAPI: the API and the server-rendered dashboard (templates/)

FastAPI is imported only by `app.py`; the rest needs the core dependencies (and cryptography).
"""
