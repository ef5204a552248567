"""The web console: the fleet's runs, approvals, traces and health in a browser.

A thin face over the same library as the CLI (sync.cloud.views, sync.cloud.decisions):
server-side pages, one route per view, actions that call exactly what the CLI calls.
Only `settings` and `tokens` are imported by the CLI and the config; the web parts
(starlette, uvicorn, jinja2: the `cloud` extra) are imported when the console serves.
"""
