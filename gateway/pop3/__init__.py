"""POP3 front end: a pure core that speaks the protocol and a thin asyncio shell."""
