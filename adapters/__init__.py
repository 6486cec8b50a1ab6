"""Back-end adapters: the only code in casgate that talks to mail, calendar and contact stores."""
