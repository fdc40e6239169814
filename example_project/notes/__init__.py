"""A tiny notes app: a page with a form, a JSON list and the pools' numbers."""
