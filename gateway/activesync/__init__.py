"""Exchange ActiveSync: the WBXML codec (MS-ASWBXML) and, later, the command handlers built on it."""
