"""`python -m gateway --config PATH --host 127.0.0.1 --port N`: one gateway process.

Equivalent to `servelab gateway ...`; tests and benchmarks spawn it this way because it skips
the import of the other packages' command modules.
"""

from __future__ import annotations

from gateway.cli import main

if __name__ == "__main__":
    main()
