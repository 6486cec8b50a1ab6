"""The HTTPS application: one aiohttp app on which every HTTP front end mounts its routes."""
