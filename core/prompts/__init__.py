"""The AUTOMATIC1111 prompt language, parsed into plain data (see parser.py's docstring)."""
from core.prompts.parser import *  # noqa: F401,F403 - the package's API is the parser's __all__
from core.prompts.parser import __all__  # noqa: F401
