"""casgate: the Client Access role of Exchange 2010, in front of the mail stores you already run."""

__version__ = "0.1.0"
