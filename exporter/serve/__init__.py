"""HTTP: the routes, the guard, the web config."""
