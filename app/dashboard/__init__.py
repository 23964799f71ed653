"""The browser dashboard at `/` and the offline /docs page: static files served by the API itself."""
