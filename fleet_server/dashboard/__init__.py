"""The fleet server's web dashboard: data views (``views``, no web framework) and routes (``routes``).

The server process imports only :mod:`fleet_server.dashboard.views` (to publish rollout progress to
the live bus); the FastAPI routes are loaded with the HTTP API. The page itself is hand-written
HTML, CSS and ES modules in ``fleet_server/static/``, served by the API with no network access at
run time.
"""
