"""Fine-tune one embedded default in a process of its own: `python -m fmhub.bootstrap SCENARIO`.

The app starts this as a child process rather than a thread: in-process the training shared the interpreter lock
with the web server's event loop and ran about 1.5x slower on 2 cores (customer service 193 s instead of 124 s); a
crash or an out-of-memory kill cannot take the server down; and the training's memory goes back to the system when
it ends. Protocol on stdout, one line each: `progress <fraction>` while training, `error <message>` for a clear
failure (exit status 2); anything else the training prints is passed through to the app's console.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from fmhub.defaults import ensure_default_model
    from fmhub.errors import FmhubError

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m fmhub.bootstrap SCENARIO", file=sys.stderr)
        return 2

    def progress(fraction: float, _message: str) -> None:
        print(f"progress {fraction:.4f}", flush=True)

    try:
        ensure_default_model(args[0], progress=progress)
    except FmhubError as err:
        print(f"error {err}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
