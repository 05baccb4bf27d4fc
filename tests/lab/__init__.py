"""The docker lab: a kind-shaped cluster on local parts, its stand-in API server, and the lab tests.

`python -m tests.lab up|down|status|apiserver` drives it by hand; pytest brings it up once per session.
"""
