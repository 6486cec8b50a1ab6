"""Exchange Web Services front end: the SOAP core, the aiohttp shell and one module per operation."""
