"""`curate serve`: the HTTP API, the job runner and the web page over one home.

settings.py   the service's config file (strict YAML, like pipeline specs)
tokens.py     API tokens with roles, stored hashed in HOME/service/tokens.json, managed by `curate token`
jobs.py       the writer queue: runs and opt-out applications, one at a time, on Ray, surviving restarts
app.py        the FastAPI application: every route declares the role it needs
static/       the web page (plain HTML and JavaScript, no build step)
"""
