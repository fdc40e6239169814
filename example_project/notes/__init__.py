"""A tiny notes app: a page with a form, a live page of the pools, and their JSON."""
