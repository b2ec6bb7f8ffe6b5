"""The one exception type for a person's mistakes (a setting, a file, a sequence).

`ConfigError` is a ValueError, so code that catches ValueError keeps working; the
CLI prints it as one line (what is wrong, which key to change) and the run dir,
where any other exception, a bug, keeps its traceback. HYDRA_FULL_ERROR=1 shows
the traceback of a ConfigError too.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting or input that cannot work; the message names the key and what is allowed."""
