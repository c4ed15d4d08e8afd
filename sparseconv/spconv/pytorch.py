"""`import sparseconv.spconv.pytorch as spconv` for code written as `import spconv.pytorch as spconv`: the same
names as sparseconv.spconv, and the same errors for spconv names that are not supported."""
from . import __all__, __getattr__  # noqa: F401  (the package's module __getattr__: errors for missing names)
from . import *  # noqa: F401,F403
