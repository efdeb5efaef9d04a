"""Model-powered data: Evol-Instruct, CRAFT, Self-Instruct and the probability judge.

The generators' config classes are part of `data_engine.config` (which imports them at its
end); importing the config first keeps that cycle in one order whichever module a caller
imports first.
"""

import data_engine.config  # noqa: F401
